//! 2x2 max pooling with stride 2 (the U-Net's downsampling). burn-flex pools through its general
//! 3-D pooling with indices, a few integer divisions per input value; here each output is the
//! largest of its four inputs, and the backward pass finds that input again instead of keeping
//! indices.

use super::for_each_chunk;

/// Shapes of a 2x2, stride-2 pooling: `planes` (batch times channels) of `height x width`;
/// an odd last row or column is left out, as burn does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    pub planes: usize,
    pub height: usize,
    pub width: usize,
}

impl PoolGeometry {
    pub fn out_height(&self) -> usize {
        self.height / 2
    }

    pub fn out_width(&self) -> usize {
        self.width / 2
    }

    fn out_plane(&self) -> usize {
        self.out_height() * self.out_width()
    }
}

/// Output planes handled per parallel task: small inputs stay on one thread.
const PLANES_PER_TASK: usize = 8;

/// Row-major offset, within its window's first row, of the input that output `(y, x)` takes:
/// the first largest in reading order (what burn's pooling picks on ties).
#[inline(always)]
fn window_max(plane: &[f32], width: usize, y: usize, x: usize) -> (f32, usize) {
    let top = 2 * y * width + 2 * x;
    let mut best = (plane[top], top);
    for at in [top + 1, top + width, top + width + 1] {
        if plane[at] > best.0 {
            best = (plane[at], at);
        }
    }
    best
}

/// The pooled `[planes, H/2, W/2]` of `x` `[planes, H, W]`.
pub fn forward(g: &PoolGeometry, x: &[f32]) -> Vec<f32> {
    let (plane, out_plane) = (g.height * g.width, g.out_plane());
    let mut y = vec![0.0f32; g.planes * out_plane];
    if out_plane == 0 {
        return y;
    }
    for_each_chunk(
        &mut y,
        PLANES_PER_TASK * out_plane,
        true,
        |(task, outputs)| {
            for (i, out) in outputs.chunks_exact_mut(out_plane).enumerate() {
                let input = &x[(task * PLANES_PER_TASK + i) * plane..][..plane];
                for (oy, row) in out.chunks_exact_mut(g.out_width()).enumerate() {
                    for (ox, v) in row.iter_mut().enumerate() {
                        *v = window_max(input, g.width, oy, ox).0;
                    }
                }
            }
        },
    );
    y
}

/// The input gradient: each output's gradient `dy` goes to the input that [`forward`] took.
pub fn backward(g: &PoolGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (plane, out_plane) = (g.height * g.width, g.out_plane());
    let mut dx = vec![0.0f32; g.planes * plane];
    if out_plane == 0 {
        return dx;
    }
    for_each_chunk(&mut dx, PLANES_PER_TASK * plane, true, |(task, grads)| {
        for (i, grad) in grads.chunks_exact_mut(plane).enumerate() {
            let p = task * PLANES_PER_TASK + i;
            let (input, up) = (&x[p * plane..][..plane], &dy[p * out_plane..][..out_plane]);
            for (oy, row) in up.chunks_exact(g.out_width()).enumerate() {
                for (ox, &d) in row.iter().enumerate() {
                    grad[window_max(input, g.width, oy, ox).1] += d;
                }
            }
        }
    });
    dx
}
