//! 2-D convolution of f32 NCHW buffers as im2col + one matrix product per image: the forward
//! pass and both backward passes (input and weight gradients), each image's matrix products
//! handed to `gemm` (AVX-512 kernels where the CPU has them).
//!
//! Per image, with `K = C_in * k_h * k_w` and `N = H_out * W_out`:
//! - forward: `y[C_out, N] = W[C_out, K] · col(x)[K, N]` (+ bias);
//! - input gradient: `dcol[K, N] = Wᵀ · dy`, scattered back onto the image (col2im);
//! - weight gradient: `dW[C_out, K] += dy · col(x)ᵀ`, summed over the batch.
//!
//! Images run in parallel (rayon) when the batch can keep every thread busy; otherwise the
//! matrix products themselves are parallel, as single-face inference needs.

use std::ops::Range;

use gemm::Parallelism;

#[cfg(target_arch = "x86_64")]
use super::amx;
use rayon::prelude::*;

/// Shapes of one convolution (groups 1, dilation 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub channels_in: usize,
    pub channels_out: usize,
    /// Input height and width.
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl ConvGeometry {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding[0] - self.kernel[0]) / self.stride[0] + 1
    }

    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding[1] - self.kernel[1]) / self.stride[1] + 1
    }

    /// Whether the geometry describes a convolution (non-empty, kernel within the padded input).
    pub fn is_valid(&self) -> bool {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        [self.channels_in, self.channels_out, kh, kw, sh, sw]
            .iter()
            .all(|&v| v > 0)
            && self.height + 2 * self.padding[0] >= kh
            && self.width + 2 * self.padding[1] >= kw
    }

    /// Rows of an image's column matrix (`K`).
    fn patch(&self) -> usize {
        self.channels_in * self.kernel[0] * self.kernel[1]
    }

    /// Columns of an image's column matrix: output pixels (`N`).
    fn out_plane(&self) -> usize {
        self.out_height() * self.out_width()
    }

    fn in_image(&self) -> usize {
        self.channels_in * self.height * self.width
    }

    fn out_image(&self) -> usize {
        self.channels_out * self.out_plane()
    }

    /// A 1x1 convolution with stride 1 and no padding reads the image itself as its column matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    fn inner_parallelism(&self) -> Parallelism {
        matmul_parallelism(self.batch)
    }
}

/// Parallel matrix products only when the batch alone cannot keep every thread busy.
pub(super) fn matmul_parallelism(batch: usize) -> Parallelism {
    if batch >= rayon::current_num_threads() {
        Parallelism::None
    } else {
        Parallelism::Rayon(0)
    }
}

thread_local! {
    /// Each thread's scratch memory for column matrices, kept between calls.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer of `len` values. Its contents are left over from
/// earlier calls: `f` must write what it reads. Re-entrant (a nested call, say from a rayon job
/// stolen while `f` waits, gets a buffer of its own).
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buffer = SCRATCH.take();
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    let result = f(&mut buffer[..len]);
    SCRATCH.with(|slot| {
        let kept = slot.take();
        slot.set(if kept.len() >= buffer.len() {
            kept
        } else {
            buffer
        });
    });
    result
}

/// Runs `one_image(b, output of image b)` for every image of `out` (`batch` equal slices), the
/// images in parallel when the batch can keep every thread busy.
pub(super) fn for_each_image(
    out: &mut [f32],
    batch: usize,
    one_image: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    let per_image = out.len() / batch.max(1);
    if per_image == 0 {
        return;
    }
    if matches!(matmul_parallelism(batch), Parallelism::None) {
        out.par_chunks_mut(per_image)
            .enumerate()
            .for_each(|(b, image)| one_image(b, image));
    } else {
        out.chunks_mut(per_image)
            .enumerate()
            .for_each(|(b, image)| one_image(b, image));
    }
}

/// Runs `partial` on the batch split into one range of images per thread (each range with its
/// slice of the input gradient `dx`, `in_image` values per image) and adds up the partial sums it
/// returns; one range on the calling thread when the matrix products are parallel instead.
pub(super) fn sum_over_batch(
    batch: usize,
    in_image: usize,
    dx: Option<&mut [f32]>,
    partial: impl Fn(Range<usize>, Option<&mut [f32]>) -> Vec<Vec<f32>> + Sync,
) -> Vec<Vec<f32>> {
    if !matches!(matmul_parallelism(batch), Parallelism::None) {
        return partial(0..batch, dx);
    }
    let per_thread = batch.div_ceil(rayon::current_num_threads().min(batch));
    let ranges: Vec<Range<usize>> = (0..batch)
        .step_by(per_thread)
        .map(|start| start..(start + per_thread).min(batch))
        .collect();
    let dx_slices: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) => dx.chunks_mut(per_thread * in_image).map(Some).collect(),
        None => ranges.iter().map(|_| None).collect(),
    };
    ranges
        .into_par_iter()
        .zip(dx_slices)
        .map(|(range, dx)| partial(range, dx))
        .reduce_with(|mut a, b| {
            for (sum, part) in a.iter_mut().zip(&b) {
                sum.iter_mut().zip(part).for_each(|(s, p)| *s += p);
            }
            a
        })
        .unwrap_or_default()
}

/// The output columns `ox` whose input column `ox * stride + k - pad` lies inside `0..size`.
fn valid_columns(out: usize, stride: usize, k: usize, pad: usize, size: usize) -> (usize, usize) {
    let offset = k as isize - pad as isize;
    // ox * stride + offset >= 0  <=>  ox >= ceil(-offset / stride)
    let lo = if offset >= 0 {
        0
    } else {
        ((-offset) as usize).div_ceil(stride)
    };
    // ox * stride + offset <= size - 1
    let last = size as isize - 1 - offset;
    let hi = if last < 0 {
        0
    } else {
        (last as usize / stride + 1).min(out)
    };
    (lo.min(hi), hi)
}

/// Visits every (row of the column matrix, output row) pair with the input row it reads (or
/// `None` in the padding) and the output columns that fall inside the image.
fn for_each_patch_row(
    g: &ConvGeometry,
    mut visit: impl FnMut(usize, usize, Option<usize>, (usize, usize), usize),
) {
    let (oh, ow) = (g.out_height(), g.out_width());
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.padding;
    for ci in 0..g.channels_in {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = (ci * kh + ky) * kw + kx;
                let cols = valid_columns(ow, sw, kx, pw, g.width);
                for oy in 0..oh {
                    let iy = (oy * sh + ky) as isize - ph as isize;
                    let input_row = (iy >= 0 && (iy as usize) < g.height)
                        .then(|| ci * g.height * g.width + iy as usize * g.width);
                    visit(row, oy, input_row, cols, kx);
                }
            }
        }
    }
}

/// Unfolds one image `[C_in, H, W]` into its column matrix `[K, N]`, whose rows lie `ld` values
/// apart in `col` (`N` for the image alone, `B·N` for its block of the whole batch's matrix).
fn im2col(g: &ConvGeometry, image: &[f32], col: &mut [f32], ld: usize) {
    let ow = g.out_width();
    let [sw, pw] = [g.stride[1], g.padding[1]];
    for_each_patch_row(g, |row, oy, input_row, (lo, hi), kx| {
        let out = &mut col[row * ld + oy * ow..][..ow];
        let Some(start) = input_row else {
            out.fill(0.0);
            return;
        };
        out[..lo].fill(0.0);
        out[hi..].fill(0.0);
        let src = &image[start..start + g.width];
        if sw == 1 {
            let first = lo + kx - pw;
            out[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
        } else {
            for (ox, v) in out.iter_mut().enumerate().take(hi).skip(lo) {
                *v = src[ox * sw + kx - pw];
            }
        }
    });
}

/// The image's column matrix `[K, N]`: the image itself for a pointwise convolution, else its
/// unfolding into `col`.
fn image_columns<'a>(g: &ConvGeometry, image: &'a [f32], col: &'a mut [f32]) -> &'a [f32] {
    if g.is_pointwise() {
        image
    } else {
        im2col(g, image, col, g.out_plane());
        col
    }
}

/// Folds a column matrix `[K, N]` (rows `ld` apart, as in [`im2col`]) back onto a zeroed image
/// `[C_in, H, W]`, adding overlaps.
fn col2im(g: &ConvGeometry, col: &[f32], image: &mut [f32], ld: usize) {
    let ow = g.out_width();
    let [sw, pw] = [g.stride[1], g.padding[1]];
    for_each_patch_row(g, |row, oy, input_row, (lo, hi), kx| {
        let Some(start) = input_row else { return };
        let src = &col[row * ld + oy * ow..][..ow];
        let dst = &mut image[start..start + g.width];
        if sw == 1 {
            let first = lo + kx - pw;
            for (d, s) in dst[first..first + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                *d += s;
            }
        } else {
            for (ox, s) in src.iter().enumerate().take(hi).skip(lo) {
                dst[ox * sw + kx - pw] += s;
            }
        }
    });
}

/// A row-major matrix view for `gemm`: `rows x cols` with the given strides (in elements).
#[derive(Clone, Copy)]
pub(super) struct Mat {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) row_stride: isize,
    pub(super) col_stride: isize,
}

impl Mat {
    pub(super) fn row_major(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    pub(super) fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

/// Products with fewer multiply-adds than this run on the calling thread even when asked to be
/// parallel: waking the other thread costs more than it saves. A base-8 U-Net at 80x80 (one
/// face, bf16): 3.9 ms per face with every product parallel, 3.6 ms with this threshold, 4.7 ms
/// with none parallel; 1 M and 16 M measured 3.8 and 4.7 ms.
const MIN_PARALLEL_MACS: usize = 1 << 22;

/// `dst = lhs · rhs`, or `dst += lhs · rhs` with `accumulate`: on AMX tiles in bf16 when
/// [`super::precision`] says so and the CPU has them, else in f32 by `gemm`.
pub(super) fn matmul(
    dst: &mut [f32],
    lhs: &[f32],
    lhs_shape: Mat,
    rhs: &[f32],
    rhs_shape: Mat,
    accumulate: bool,
    parallelism: Parallelism,
) {
    let (m, k, n) = (lhs_shape.rows, lhs_shape.cols, rhs_shape.cols);
    let parallelism = if m * k * n < MIN_PARALLEL_MACS {
        Parallelism::None
    } else {
        parallelism
    };
    #[cfg(target_arch = "x86_64")]
    if super::uses_tiles() && amx::pays(m, k) {
        let parallel = !matches!(parallelism, Parallelism::None);
        amx::matmul(dst, lhs, lhs_shape, rhs, rhs_shape, accumulate, parallel);
        return;
    }
    assert_eq!(rhs_shape.rows, k, "inner dimensions agree");
    assert!(dst.len() >= m * n, "destination holds the product");
    let extent =
        |s: Mat| (s.rows - 1) as isize * s.row_stride + (s.cols - 1) as isize * s.col_stride;
    assert!(extent(lhs_shape) < lhs.len() as isize && extent(rhs_shape) < rhs.len() as isize);
    // SAFETY: the asserts above keep every index gemm touches inside the three slices, and `dst`
    // does not alias the inputs (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_shape.col_stride,
            lhs_shape.row_stride,
            rhs.as_ptr(),
            rhs_shape.col_stride,
            rhs_shape.row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The convolution of `x` `[B, C_in, H, W]` with `weight` `[C_out, C_in, k_h, k_w]`, plus `bias`
/// `[C_out]`, then with `relu` negative values set to 0: `[B, C_out, H_out, W_out]`.
pub fn forward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let epilogue = Epilogue {
        bias,
        map: None,
        relu,
    };
    forward_packed(g, x, weight, None, epilogue)
}

/// What is added to a convolution's sums, and whether ReLU follows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// `[C_out]`.
    pub bias: Option<&'a [f32]>,
    /// `[C_out, H_out, W_out]`, added to every image (the heatmap net's log-prior).
    pub map: Option<&'a [f32]>,
    pub relu: bool,
}

/// The weights as [`forward`] packs them for AMX tiles (when it uses them for `g`): a model that
/// only infers can pack them once and pass them to [`forward_packed`].
pub fn packed_weights(g: &ConvGeometry, weight: &[f32]) -> Option<Vec<u16>> {
    #[cfg(target_arch = "x86_64")]
    if super::uses_tiles() && amx::pays_packed(g.channels_out) {
        return Some(if amx::reads_in_place(g) {
            amx::in_place_weights(g, weight)
        } else {
            amx::packed_rows(weight, Mat::row_major(g.channels_out, g.patch()))
        });
    }
    let _ = (g, weight);
    None
}

/// [`forward`] with an [`Epilogue`], and with the weights already packed by [`packed_weights`]
/// for this geometry (and precision), if they were.
pub fn forward_packed(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    packed: Option<&[u16]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    if let Some(map) = epilogue.map {
        assert_eq!(
            map.len(),
            g.out_image(),
            "a map value per output value of an image"
        );
    }
    let Epilogue { bias, map, relu } = epilogue;
    let (k, n) = (g.patch(), g.out_plane());
    let w = Mat::row_major(g.channels_out, k);
    #[cfg(target_arch = "x86_64")]
    if super::uses_tiles() && amx::pays_packed(g.channels_out) {
        // One product for the whole batch (weights packed once, the threads sharing every
        // image's column tiles); the column matrices go straight into tiles, never written out.
        // Bias and ReLU are applied as the sums are stored: every output value is written once.
        let store = amx::Store {
            accumulate: false,
            bias,
            map,
            relu,
        };
        let packing;
        let weights = match packed {
            Some(packed) => packed,
            None => {
                packing = packed_weights(g, weight).expect("tiles are in use");
                &packing
            }
        };
        let (len, m) = (g.batch * g.out_image(), g.channels_out);
        return if amx::reads_in_place(g) {
            let columns = amx::ConvInPlace::new(g, x);
            amx::matmul_packed_new(len, weights, m, &columns, store, true)
        } else {
            let columns = amx::ConvColumns::new(g, x);
            amx::matmul_packed_new(len, weights, m, &columns, store, true)
        };
    }
    let _ = packed;
    if let Some(map) = map {
        // Rare in f32 (inference of a heatmap net with a prior): the map is added before ReLU.
        let mut y = forward(g, x, weight, bias, false);
        for image in y.chunks_mut(map.len()) {
            for (v, m) in image.iter_mut().zip(map) {
                *v = if relu { (*v + m).max(0.0) } else { *v + m };
            }
        }
        return y;
    }
    if g.whole_batch() {
        return forward_whole_batch(g, x, weight, bias, relu);
    }
    let cols = Mat::row_major(k, n);
    let parallelism = g.inner_parallelism();
    let mut y = vec![0.0f32; g.batch * g.out_image()];
    for_each_image(&mut y, g.batch, |b, out| {
        let image = &x[b * g.in_image()..][..g.in_image()];
        if let Some(bias) = bias {
            for (plane, &v) in out.chunks_mut(n).zip(bias) {
                plane.fill(v);
            }
        }
        let accumulate = bias.is_some();
        let scratch = if g.is_pointwise() { 0 } else { k * n };
        with_scratch(scratch, |col| {
            let cols_of_image = image_columns(g, image, col);
            matmul(out, weight, w, cols_of_image, cols, accumulate, parallelism);
        });
        if relu {
            // While the image is still in cache.
            out.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    });
    y
}

/// Gradients of [`forward`] (without bias: callers add it, and differentiate it, with burn's own
/// operations) from the output gradient `dy`: the input's (when `want_input`) and the weight's.
pub struct Gradients {
    pub input: Option<Vec<f32>>,
    pub weight: Vec<f32>,
}

/// The backward pass of [`forward`].
pub fn backward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_input: bool,
) -> Gradients {
    #[cfg(target_arch = "x86_64")]
    if super::uses_tiles() && amx::reads_in_place(g) {
        // A stride-1 convolution's input gradient is itself a stride-1 convolution, of `dy` with
        // the flipped filters, and its weight gradient one product over the shifted inputs:
        // both read their tiles in place, with no column matrix built or folded back.
        if let Some(t) = g.input_gradient() {
            let input =
                want_input.then(|| forward(&t, dy, &flipped_filters(g, weight), None, false));
            return Gradients {
                input,
                weight: amx::weight_gradient(g, x, dy),
            };
        }
    }
    if g.whole_batch() {
        return backward_whole_batch(g, x, weight, dy, want_input);
    }
    let (k, n) = (g.patch(), g.out_plane());
    let w = Mat::row_major(g.channels_out, k);
    let dy_image = Mat::row_major(g.channels_out, n);
    let cols = Mat::row_major(k, n);
    let parallelism = g.inner_parallelism();

    let mut dx = want_input.then(|| vec![0.0f32; g.batch * g.in_image()]);
    let transposed_dw = weight_gradient_transposed(k, n);
    let partial = |images: Range<usize>, mut dx: Option<&mut [f32]>| {
        let mut dw = vec![0.0f32; g.channels_out * k];
        // Column matrices of the input (for dW) and of the input gradient (for dx).
        let scratch = if g.is_pointwise() { 0 } else { 2 * k * n };
        with_scratch(scratch, |buffers| {
            let (col, dcol) = buffers.split_at_mut(scratch / 2);
            for (i, b) in images.enumerate() {
                let image = &x[b * g.in_image()..][..g.in_image()];
                let grad = &dy[b * g.out_image()..][..g.out_image()];
                let cols_of_image = image_columns(g, image, col);
                if transposed_dw {
                    let dy_t = dy_image.transposed();
                    matmul(&mut dw, cols_of_image, cols, grad, dy_t, true, parallelism);
                } else {
                    let cols_t = cols.transposed();
                    matmul(
                        &mut dw,
                        grad,
                        dy_image,
                        cols_of_image,
                        cols_t,
                        true,
                        parallelism,
                    );
                }
                let Some(dx) = dx.as_deref_mut() else {
                    continue;
                };
                let dx_image = &mut dx[i * g.in_image()..][..g.in_image()];
                if g.is_pointwise() {
                    matmul(
                        dx_image,
                        weight,
                        w.transposed(),
                        grad,
                        dy_image,
                        false,
                        parallelism,
                    );
                } else {
                    matmul(
                        dcol,
                        weight,
                        w.transposed(),
                        grad,
                        dy_image,
                        false,
                        parallelism,
                    );
                    col2im(g, dcol, dx_image, n);
                }
            }
        });
        vec![dw]
    };
    let dw = sum_over_batch(g.batch, g.in_image(), dx.as_deref_mut(), partial)
        .pop()
        .unwrap_or_default();
    let dw = if transposed_dw {
        transpose(&dw, k, g.channels_out)
    } else {
        dw
    };
    Gradients {
        input: dx,
        weight: dw,
    }
}

/// Whether the weight gradient `dW[C_out, K] = dY · colsᵀ` (depth `pixels`) is better computed
/// as its transpose `cols · dYᵀ` on AMX tiles: `K` rows (usually 32 or more, where tiles pay)
/// instead of `C_out` (16 in the U-Net's full-resolution layers, where they do not).
fn weight_gradient_transposed(patch: usize, pixels: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::uses_tiles() && amx::pays(patch, pixels)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (patch, pixels);
        false
    }
}

impl ConvGeometry {
    /// For stride 1 (padding at most the kernel less one): the convolution that maps the output
    /// gradient to the input gradient (with [`flipped_filters`]).
    fn input_gradient(&self) -> Option<ConvGeometry> {
        let [kh, kw] = self.kernel;
        (self.stride == [1, 1] && self.padding[0] < kh && self.padding[1] < kw).then(|| {
            ConvGeometry {
                batch: self.batch,
                channels_in: self.channels_out,
                channels_out: self.channels_in,
                height: self.out_height(),
                width: self.out_width(),
                kernel: self.kernel,
                stride: [1, 1],
                padding: [kh - 1 - self.padding[0], kw - 1 - self.padding[1]],
            }
        })
    }
}

/// `[C_out, C_in, k_h, k_w]` filters as `[C_in, C_out, k_h, k_w]`, each turned by 180 degrees.
fn flipped_filters(g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    let taps = g.kernel[0] * g.kernel[1];
    let mut flipped = vec![0.0f32; weight.len()];
    for co in 0..g.channels_out {
        for ci in 0..g.channels_in {
            let from = &weight[(co * g.channels_in + ci) * taps..][..taps];
            let to = &mut flipped[(ci * g.channels_out + co) * taps..][..taps];
            for (t, &v) in to.iter_mut().rev().zip(from) {
                *t = v;
            }
        }
    }
    flipped
}

/// `rows x cols` row-major to its `cols x rows` transpose.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    for (r, row) in values.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// Images whose output has fewer pixels than this share one matrix product for the whole batch:
/// one per image would be too thin for gemm to run at speed (ResNet's deeper stages: 28x28 and
/// less at a 112 input).
const WHOLE_BATCH_BELOW: usize = 1024;

impl ConvGeometry {
    fn whole_batch(&self) -> bool {
        self.batch > 1 && self.out_plane() < WHOLE_BATCH_BELOW
    }
}

/// The whole batch's column matrix `[K, B·N]`: image `b`'s columns at `b·N`.
fn batch_columns(g: &ConvGeometry, x: &[f32], col: &mut [f32]) {
    let n = g.out_plane();
    let ld = g.batch * n;
    for b in 0..g.batch {
        im2col(
            g,
            &x[b * g.in_image()..][..g.in_image()],
            &mut col[b * n..],
            ld,
        );
    }
}

/// [`forward`] as one product `Y[C_out, B·N] = W · cols[K, B·N]`, then `Y` to `[B, C_out, N]`.
fn forward_whole_batch(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let (k, n, bn) = (g.patch(), g.out_plane(), g.batch * g.out_plane());
    let mut y = vec![0.0f32; g.batch * g.out_image()];
    with_scratch(k * bn + g.channels_out * bn, |scratch| {
        let (col, product) = scratch.split_at_mut(k * bn);
        batch_columns(g, x, col);
        let (w, cols) = (Mat::row_major(g.channels_out, k), Mat::row_major(k, bn));
        matmul(product, weight, w, col, cols, false, Parallelism::Rayon(0));
        y.par_chunks_mut(n).enumerate().for_each(|(i, out)| {
            let (b, co) = (i / g.channels_out, i % g.channels_out);
            let shift = bias.map_or(0.0, |bias| bias[co]);
            let src = &product[co * bn + b * n..][..n];
            for (o, &v) in out.iter_mut().zip(src) {
                let v = v + shift;
                *o = if relu { v.max(0.0) } else { v };
            }
        });
    });
    y
}

/// [`backward`] with the whole batch's matrices: `dW = dY[C_out, B·N] · colsᵀ` and
/// `dcols = Wᵀ · dY`, folded back image by image.
fn backward_whole_batch(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_input: bool,
) -> Gradients {
    let (k, n, bn) = (g.patch(), g.out_plane(), g.batch * g.out_plane());
    let w = Mat::row_major(g.channels_out, k);
    let (grads, cols) = (Mat::row_major(g.channels_out, bn), Mat::row_major(k, bn));
    let mut dw = vec![0.0f32; g.channels_out * k];
    let mut dx = want_input.then(|| vec![0.0f32; g.batch * g.in_image()]);
    with_scratch(2 * k * bn + g.channels_out * bn, |scratch| {
        let (col, rest) = scratch.split_at_mut(k * bn);
        let (dcol, dy_all) = rest.split_at_mut(k * bn);
        // dY as [C_out, B·N].
        dy_all.par_chunks_mut(bn).enumerate().for_each(|(co, row)| {
            for b in 0..g.batch {
                row[b * n..][..n].copy_from_slice(&dy[(b * g.channels_out + co) * n..][..n]);
            }
        });
        batch_columns(g, x, col);
        let all_threads = Parallelism::Rayon(0);
        if weight_gradient_transposed(k, bn) {
            let mut dw_t = vec![0.0f32; k * g.channels_out];
            matmul(
                &mut dw_t,
                col,
                cols,
                dy_all,
                grads.transposed(),
                false,
                all_threads,
            );
            dw = transpose(&dw_t, k, g.channels_out);
        } else {
            let cols_t = cols.transposed();
            matmul(&mut dw, dy_all, grads, col, cols_t, false, all_threads);
        }
        if let Some(dx) = dx.as_mut() {
            matmul(
                dcol,
                weight,
                w.transposed(),
                dy_all,
                grads,
                false,
                all_threads,
            );
            let dcol: &[f32] = dcol;
            dx.par_chunks_mut(g.in_image())
                .enumerate()
                .for_each(|(b, image)| col2im(g, &dcol[b * n..], image, bn));
        }
    });
    Gradients {
        input: dx,
        weight: dw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution by its definition, for checking.
    fn naive(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
        let (oh, ow) = (g.out_height(), g.out_width());
        let [kh, kw] = g.kernel;
        let mut y = vec![0.0; g.batch * g.channels_out * oh * ow];
        for b in 0..g.batch {
            for co in 0..g.channels_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut s = 0.0;
                        for ci in 0..g.channels_in {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy =
                                        (oy * g.stride[0] + ky) as isize - g.padding[0] as isize;
                                    let ix =
                                        (ox * g.stride[1] + kx) as isize - g.padding[1] as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy as usize >= g.height
                                        || ix as usize >= g.width
                                    {
                                        continue;
                                    }
                                    s += x[((b * g.channels_in + ci) * g.height + iy as usize)
                                        * g.width
                                        + ix as usize]
                                        * w[((co * g.channels_in + ci) * kh + ky) * kw + kx];
                                }
                            }
                        }
                        y[((b * g.channels_out + co) * oh + oy) * ow + ox] = s;
                    }
                }
            }
        }
        y
    }

    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn valid_columns_cover_exactly_the_inside() {
        for (out, stride, k, pad, size) in [
            (5, 1, 0, 1, 5),
            (5, 1, 2, 1, 5),
            (3, 2, 0, 1, 5),
            (3, 2, 2, 1, 6),
            (4, 3, 6, 3, 10),
        ] {
            let (lo, hi) = valid_columns(out, stride, k, pad, size);
            for ox in 0..out {
                let ix = (ox * stride + k) as isize - pad as isize;
                let inside = ix >= 0 && (ix as usize) < size;
                assert_eq!(
                    inside,
                    (lo..hi).contains(&ox),
                    "{out} {stride} {k} {pad} {size}: {ox}"
                );
            }
        }
    }

    #[test]
    fn forward_equals_the_definition() {
        crate::kernels::f32_products();
        for (kernel, stride, padding) in [
            ([3, 3], [1, 1], [1, 1]),
            ([3, 3], [2, 2], [1, 1]),
            ([1, 1], [1, 1], [0, 0]),
            ([7, 7], [2, 2], [3, 3]),
            ([1, 1], [2, 2], [0, 0]),
            ([2, 3], [1, 2], [0, 1]),
        ] {
            for batch in [1, 3] {
                let g = ConvGeometry {
                    batch,
                    channels_in: 3,
                    channels_out: 5,
                    height: 9,
                    width: 11,
                    kernel,
                    stride,
                    padding,
                };
                let x = values(g.batch * g.in_image(), 1);
                let w = values(g.channels_out * g.patch(), 2);
                let want = naive(&g, &x, &w);
                let got = forward(&g, &x, &w, None, false);
                for (a, b) in want.iter().zip(&got) {
                    assert!(
                        (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                        "{g:?}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
