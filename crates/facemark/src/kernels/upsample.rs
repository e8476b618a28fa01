//! Transposed convolution whose kernel equals its stride (no padding): the U-Net's 2x2,
//! stride-2 upsampling. Each input pixel then paints its own `k_h x k_w` block of the output, so
//! per image the layer is one matrix product, `Z[C_out·k_h·k_w, H·W] = Wᵀ · x[C_in, H·W]`, and a
//! depth-to-space reshuffle of `Z` into `[C_out, H·k_h, W·k_w]`; both gradients are matrix
//! products of the reshuffled output gradient.

use super::conv::{
    ConvGeometry, Mat, for_each_image, matmul, matmul_parallelism, sum_over_batch, with_scratch,
};

/// Shapes of one non-overlapping transposed convolution (groups 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpGeometry {
    pub batch: usize,
    pub channels_in: usize,
    pub channels_out: usize,
    /// Input height and width.
    pub height: usize,
    pub width: usize,
    /// Kernel size, equal to the stride.
    pub kernel: [usize; 2],
}

impl UpGeometry {
    pub fn out_height(&self) -> usize {
        self.height * self.kernel[0]
    }

    pub fn out_width(&self) -> usize {
        self.width * self.kernel[1]
    }

    /// Rows of `Z`: an output channel's kernel positions, for every output channel.
    fn blocks(&self) -> usize {
        self.channels_out * self.kernel[0] * self.kernel[1]
    }

    fn plane(&self) -> usize {
        self.height * self.width
    }

    fn in_image(&self) -> usize {
        self.channels_in * self.plane()
    }

    fn out_image(&self) -> usize {
        self.blocks() * self.plane()
    }
}

/// Visits the row pairs of depth-to-space: `Z[(co, a, c), i·W..(i+1)·W]` (its start) against
/// the output row `y[co, i·k_h + a, ..]` (its start), whose every `k_w`-th value from `c` on they
/// share.
fn for_each_block_row(g: &UpGeometry, mut visit: impl FnMut(usize, usize, usize)) {
    let [kh, kw] = g.kernel;
    let (h, w, ow) = (g.height, g.width, g.out_width());
    for co in 0..g.channels_out {
        for a in 0..kh {
            for c in 0..kw {
                let z_row = ((co * kh + a) * kw + c) * h * w;
                for i in 0..h {
                    visit(z_row + i * w, (co * g.out_height() + i * kh + a) * ow, c);
                }
            }
        }
    }
}

/// `Z` -> `y` (depth to space) for one image.
fn blocks_to_image(g: &UpGeometry, z: &[f32], y: &mut [f32]) {
    let (w, kw) = (g.width, g.kernel[1]);
    for_each_block_row(g, |z_start, y_start, c| {
        let src = &z[z_start..z_start + w];
        let dst = &mut y[y_start..y_start + w * kw];
        for (j, v) in src.iter().enumerate() {
            dst[j * kw + c] = *v;
        }
    });
}

/// `y` -> `Z` (space to depth) for one image.
fn image_to_blocks(g: &UpGeometry, y: &[f32], z: &mut [f32]) {
    let (w, kw) = (g.width, g.kernel[1]);
    for_each_block_row(g, |z_start, y_start, c| {
        let src = &y[y_start..y_start + w * kw];
        for (j, v) in z[z_start..z_start + w].iter_mut().enumerate() {
            *v = src[j * kw + c];
        }
    });
}

/// The layer as a 1x1 convolution from `C_in` to `C_out·k_h·k_w` channels (the rows of `Z`), for
/// the convolution kernels to compute `Z` for the whole batch at once.
pub fn pointwise_geometry(g: &UpGeometry) -> ConvGeometry {
    ConvGeometry {
        batch: g.batch,
        channels_in: g.channels_in,
        channels_out: g.blocks(),
        height: g.height,
        width: g.width,
        kernel: [1, 1],
        stride: [1, 1],
        padding: [0, 0],
    }
}

/// The weights `[C_in, C_out, k_h, k_w]` as [`pointwise_geometry`]'s `[C_out·k_h·k_w, C_in]`.
pub fn pointwise_weights(g: &UpGeometry, weight: &[f32]) -> Vec<f32> {
    let (rows, cols) = (g.channels_in, g.blocks());
    let mut transposed = vec![0.0; rows * cols];
    for (r, row) in weight.chunks_exact(cols).take(rows).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            transposed[c * rows + r] = v;
        }
    }
    transposed
}

/// Inference: the layer's output with `bias` `[C_out]`, followed along the channels by `skip`
/// `[B, C_skip, H·k_h, W·k_w]`: the U-Net's upsampling and concatenation in one pass, from `z`
/// `[B, C_out·k_h·k_w, H·W]` (as the 1x1 convolution of [`pointwise_geometry`] computes it).
/// Returns `[B, C_out + C_skip, H·k_h, W·k_w]`.
pub fn blocks_then_skip(g: &UpGeometry, z: &[f32], bias: &[f32], skip: &[f32]) -> Vec<f32> {
    let out_plane = g.out_height() * g.out_width();
    let skip_image = skip.len() / g.batch.max(1);
    let image = g.channels_out * out_plane + skip_image;
    assert!(z.len() >= g.batch * g.out_image() && bias.len() >= g.channels_out);
    let mut y = vec![0.0f32; g.batch * image];
    let (w, kw) = (g.width, g.kernel[1]);
    for (b, out) in y.chunks_exact_mut(image).enumerate() {
        let z = &z[b * g.out_image()..][..g.out_image()];
        let (upsampled, rest) = out.split_at_mut(g.channels_out * out_plane);
        for_each_block_row(g, |z_start, y_start, c| {
            let add = bias[y_start / out_plane];
            let dst = &mut upsampled[y_start..y_start + w * kw];
            for (j, v) in z[z_start..z_start + w].iter().enumerate() {
                dst[j * kw + c] = v + add;
            }
        });
        rest.copy_from_slice(&skip[b * skip_image..][..skip_image]);
    }
    y
}

/// The layer on `x` `[B, C_in, H, W]` with `weight` `[C_in, C_out, k_h, k_w]`:
/// `[B, C_out, H·k_h, W·k_w]` (bias not included).
pub fn forward(g: &UpGeometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let w_t = Mat::row_major(g.channels_in, g.blocks()).transposed();
    let image = Mat::row_major(g.channels_in, g.plane());
    let parallelism = matmul_parallelism(g.batch);
    let mut y = vec![0.0f32; g.batch * g.out_image()];
    for_each_image(&mut y, g.batch, |b, out| {
        let input = &x[b * g.in_image()..][..g.in_image()];
        with_scratch(g.out_image(), |z| {
            matmul(z, weight, w_t, input, image, false, parallelism);
            blocks_to_image(g, z, out);
        });
    });
    y
}

/// Gradients of [`forward`]: the input's (when `want_input`) and the weight's.
pub fn backward(
    g: &UpGeometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_input: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let w = Mat::row_major(g.channels_in, g.blocks());
    let z = Mat::row_major(g.blocks(), g.plane());
    let image = Mat::row_major(g.channels_in, g.plane());
    let parallelism = matmul_parallelism(g.batch);
    let mut dx = want_input.then(|| vec![0.0f32; g.batch * g.in_image()]);
    let partial = |images: std::ops::Range<usize>, mut dx: Option<&mut [f32]>| {
        let mut dw = vec![0.0f32; g.channels_in * g.blocks()];
        with_scratch(g.out_image(), |dz| {
            for (i, b) in images.enumerate() {
                image_to_blocks(g, &dy[b * g.out_image()..][..g.out_image()], dz);
                let input = &x[b * g.in_image()..][..g.in_image()];
                matmul(&mut dw, input, image, dz, z.transposed(), true, parallelism);
                if let Some(dx) = dx.as_deref_mut() {
                    let dx_image = &mut dx[i * g.in_image()..][..g.in_image()];
                    matmul(dx_image, weight, w, dz, z, false, parallelism);
                }
            }
        });
        vec![dw]
    };
    let dw = sum_over_batch(g.batch, g.in_image(), dx.as_deref_mut(), partial)
        .pop()
        .unwrap_or_default();
    (dx, dw)
}
