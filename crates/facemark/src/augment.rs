//! Geometric and photometric augmentation that moves the image and its landmarks together.
//!
//! A random affine transform (translation, rotation, shear, optional scale, about the image centre)
//! is drawn once per sample from a seeded RNG. The image is resampled through its inverse with
//! bilinear interpolation and the points go through the same forward matrix, so they cannot drift
//! apart. Works on [`Example`]s, whose points are fractions of the image size.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{Example, Point};

/// A 2-D affine map `p -> A p + t`, stored row-major as `[a, b, tx, c, d, ty]`, in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine(pub [f32; 6]);

impl Affine {
    pub const IDENTITY: Affine = Affine([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);

    pub fn translation(tx: f32, ty: f32) -> Self {
        Affine([1.0, 0.0, tx, 0.0, 1.0, ty])
    }

    pub fn rotation(radians: f32) -> Self {
        let (s, c) = radians.sin_cos();
        Affine([c, -s, 0.0, s, c, 0.0])
    }

    /// Horizontal shear: `x += k * y`.
    pub fn shear(k: f32) -> Self {
        Affine([1.0, k, 0.0, 0.0, 1.0, 0.0])
    }

    pub fn scale(s: f32) -> Self {
        Affine([s, 0.0, 0.0, 0.0, s, 0.0])
    }

    /// Composition `self ∘ other`.
    pub fn compose(self, other: Affine) -> Affine {
        let [a, b, tx, c, d, ty] = self.0;
        let [e, f, ux, g, h, uy] = other.0;
        Affine([
            a * e + b * g,
            a * f + b * h,
            a * ux + b * uy + tx,
            c * e + d * g,
            c * f + d * h,
            c * ux + d * uy + ty,
        ])
    }

    pub fn apply(&self, p: Point) -> Point {
        let [a, b, tx, c, d, ty] = self.0;
        [a * p[0] + b * p[1] + tx, c * p[0] + d * p[1] + ty]
    }

    /// The inverse map; `None` when the matrix is singular.
    pub fn inverse(&self) -> Option<Affine> {
        let [a, b, tx, c, d, ty] = self.0;
        let det = a * d - b * c;
        if det.abs() < 1e-12 {
            return None;
        }
        let (ia, ib, ic, id) = (d / det, -b / det, -c / det, a / det);
        Some(Affine([
            ia,
            ib,
            -(ia * tx + ib * ty),
            ic,
            id,
            -(ic * tx + id * ty),
        ]))
    }
}

/// How pixels that come from outside the source image are filled.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BorderFill {
    /// Repeat the nearest edge pixel.
    #[default]
    Replicate,
    /// A constant value in the normalised range `[-0.5, 0.5]`.
    Constant(f32),
}

/// Augmentation ranges; every range is symmetric about "no change".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AugmentConfig {
    /// Largest translation, as a fraction of width (x) and height (y).
    pub translate: f32,
    /// Largest rotation in degrees.
    pub rotate_degrees: f32,
    /// Largest horizontal shear factor.
    pub shear: f32,
    /// Scale range `[min, max]`; `None` keeps the size.
    pub scale: Option<[f32; 2]>,
    /// Largest brightness shift, in normalised intensity units.
    pub brightness: f32,
    /// Largest relative contrast change (0.2 draws a factor in `[0.8, 1.2]`).
    pub contrast: f32,
    pub border: BorderFill,
    /// Mirror half the images left-right, swapping each point with its partner in the landmark
    /// scheme (a scheme without mirror pairs never flips). Configs written before schemes stored
    /// the permutation itself here, as `flip`: a list reads as `true`, `null` as `false`.
    #[serde(alias = "flip", deserialize_with = "flag_or_permutation")]
    pub mirror: bool,
    /// Probability of hiding one random rectangle of the image (random erasing): the points
    /// stay where they are, so the net learns to place hidden ones from the rest of the face.
    pub occlusion: f32,
}

impl Default for AugmentConfig {
    /// The study's ranges: translate ±10 %, rotate ±22°, shear ±0.08, plus mild photometric jitter.
    fn default() -> Self {
        Self {
            translate: 0.10,
            rotate_degrees: 22.0,
            shear: 0.08,
            scale: None,
            brightness: 0.1,
            contrast: 0.2,
            border: BorderFill::Replicate,
            mirror: false,
            occlusion: 0.0,
        }
    }
}

/// One draw of the augmentation for one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentDraw {
    /// Maps source pixel coordinates to output pixel coordinates.
    pub affine: Affine,
    pub brightness: f32,
    pub contrast: f32,
    /// Whether the draw mirrors the image (the affine then includes the mirror).
    pub flipped: bool,
    /// A rectangle of the output to hide, if any.
    pub occluder: Option<Occluder>,
}

/// A rectangle of the augmented image filled with noise, in fractions of its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Occluder {
    pub left: f32,
    pub top: f32,
    pub width: f32,
    pub height: f32,
    /// Seeds the fill, so a draw stays reproducible.
    pub noise_seed: u64,
}

impl Occluder {
    /// Sides between 15 % and 45 % of the image's, anywhere on it.
    fn draw(rng: &mut impl Rng) -> Self {
        let width = rng.random_range(0.15..=0.45);
        let height = rng.random_range(0.15..=0.45);
        Self {
            left: rng.random_range(0.0..=1.0 - width),
            top: rng.random_range(0.0..=1.0 - height),
            width,
            height,
            noise_seed: rng.random(),
        }
    }

    /// Fills the rectangle of a `w` x `h` image with uniform noise around a random grey.
    fn apply(&self, pixels: &mut [f32], w: usize, h: usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.noise_seed);
        let grey: f32 = rng.random_range(-0.4..=0.4);
        let x0 = (self.left * w as f32) as usize;
        let y0 = (self.top * h as f32) as usize;
        let x1 = (((self.left + self.width) * w as f32) as usize).min(w);
        let y1 = (((self.top + self.height) * h as f32) as usize).min(h);
        for row in pixels.chunks_exact_mut(w).take(y1).skip(y0) {
            for v in &mut row[x0..x1] {
                *v = (grey + rng.random_range(-0.1..=0.1f32)).clamp(-0.5, 0.5);
            }
        }
    }
}

/// A reproducible RNG for sample `index` of `epoch` in a run seeded with `seed`.
pub fn sample_rng(seed: u64, epoch: usize, index: usize) -> ChaCha8Rng {
    // SplitMix-style mixing so nearby (epoch, index) pairs give unrelated streams.
    let mut z = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

fn symmetric(rng: &mut impl Rng, max: f32) -> f32 {
    if max > 0.0 {
        rng.random_range(-max..=max)
    } else {
        0.0
    }
}

impl AugmentConfig {
    /// Draws one transform for an image of `width` x `height` pixels.
    /// `can_flip` says whether the landmark scheme has mirror pairs.
    pub fn draw(
        &self,
        rng: &mut impl Rng,
        width: usize,
        height: usize,
        can_flip: bool,
    ) -> AugmentDraw {
        let (w, h) = (width as f32, height as f32);
        let angle = symmetric(rng, self.rotate_degrees).to_radians();
        let shear = symmetric(rng, self.shear);
        let scale = match self.scale {
            Some([lo, hi]) if hi > lo => rng.random_range(lo..=hi),
            Some([lo, _]) => lo,
            None => 1.0,
        };
        let tx = symmetric(rng, self.translate) * w;
        let ty = symmetric(rng, self.translate) * h;
        let (cx, cy) = (w / 2.0, h / 2.0);
        let flipped = self.mirror && can_flip && rng.random_bool(0.5);
        let mirror = if flipped {
            Affine([-1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        } else {
            Affine::IDENTITY
        };
        // Centre, mirror, scale, shear, rotate, move back and translate.
        let affine = Affine::translation(cx + tx, cy + ty)
            .compose(Affine::rotation(angle))
            .compose(Affine::shear(shear))
            .compose(Affine::scale(scale))
            .compose(mirror)
            .compose(Affine::translation(-cx, -cy));
        let brightness = symmetric(rng, self.brightness);
        let contrast = 1.0 + symmetric(rng, self.contrast);
        // Drawn last and only when asked for, so recipes without occlusion draw as before.
        let occluder = (self.occlusion > 0.0 && rng.random_bool(self.occlusion.min(1.0) as f64))
            .then(|| Occluder::draw(rng));
        AugmentDraw {
            affine,
            brightness,
            contrast,
            flipped,
            occluder,
        }
    }

    /// Augments `example` with a draw from `rng`; `mirror` is the scheme's mirror permutation.
    pub fn apply(
        &self,
        example: &Example,
        mirror: Option<&[usize]>,
        rng: &mut impl Rng,
    ) -> Example {
        let draw = self.draw(rng, example.width, example.height, mirror.is_some());
        let mut out = warp(example, &draw, self.border);
        if let (true, Some(mirror)) = (draw.flipped, mirror) {
            // A mirrored left eye corner is now a right one: swap partners back into place.
            out.points = mirror.iter().map(|&partner| out.points[partner]).collect();
        }
        out
    }
}

/// Reads `mirror` as a flag, or (configs from before landmark schemes) as the permutation list
/// that `flip` held: a list means mirroring was on.
fn flag_or_permutation<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(on) => Ok(on),
        serde_json::Value::Array(_) => Ok(true),
        serde_json::Value::Null => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "mirror must be true or false, not {other}"
        ))),
    }
}

/// Applies a draw: resamples the image through the inverse affine and maps the points forward.
pub fn warp(example: &Example, draw: &AugmentDraw, border: BorderFill) -> Example {
    let (w, h) = (example.width, example.height);
    let inverse = draw.affine.inverse().unwrap_or(Affine::IDENTITY);
    let mean = example.pixels.iter().sum::<f32>() / example.pixels.len().max(1) as f32;
    let mut pixels = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            // Pixel centres sit at half-integer coordinates.
            let [sx, sy] = inverse.apply([x as f32 + 0.5, y as f32 + 0.5]);
            let v = sample_bilinear(&example.pixels, w, h, sx - 0.5, sy - 0.5, border);
            let v = (v - mean) * draw.contrast + mean + draw.brightness;
            pixels.push(v.clamp(-0.5, 0.5));
        }
    }
    if let Some(occluder) = &draw.occluder {
        occluder.apply(&mut pixels, w, h);
    }
    let (wf, hf) = (w as f32, h as f32);
    let points = example
        .points
        .iter()
        .map(|p| {
            let [x, y] = draw.affine.apply([p[0] * wf, p[1] * hf]);
            [x / wf, y / hf]
        })
        .collect();
    Example {
        width: w,
        height: h,
        pixels,
        points,
    }
}

/// Bilinear sample at index-space coordinates (`(0, 0)` is the first pixel's centre).
fn sample_bilinear(pixels: &[f32], w: usize, h: usize, x: f32, y: f32, border: BorderFill) -> f32 {
    let inside = x >= -0.5 && y >= -0.5 && x <= w as f32 - 0.5 && y <= h as f32 - 0.5;
    if let (BorderFill::Constant(c), false) = (border, inside) {
        return c;
    }
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let at = |xx: usize, yy: usize| pixels[yy * w + xx];
    let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
    let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
    top * (1.0 - fy) + bottom * fy
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dark image with a bright 3x3 dot at each point (given in pixels).
    fn dots(width: usize, height: usize, points_px: &[Point]) -> Example {
        let mut pixels = vec![-0.5; width * height];
        for p in points_px {
            let (cx, cy) = (p[0].floor() as i64, p[1].floor() as i64);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (x, y) = (cx + dx, cy + dy);
                    if x >= 0 && y >= 0 && (x as usize) < width && (y as usize) < height {
                        pixels[y as usize * width + x as usize] = 0.5;
                    }
                }
            }
        }
        Example {
            width,
            height,
            pixels,
            points: points_px
                .iter()
                .map(|p| [p[0] / width as f32, p[1] / height as f32])
                .collect(),
        }
    }

    /// Intensity-weighted centre of the bright pixels within `radius` of `near` (pixels).
    fn bright_centroid(ex: &Example, near: Point, radius: f32) -> Point {
        let (mut sx, mut sy, mut sw) = (0.0, 0.0, 0.0);
        for y in 0..ex.height {
            for x in 0..ex.width {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                if (px - near[0]).hypot(py - near[1]) > radius {
                    continue;
                }
                let v = ex.pixels[y * ex.width + x] + 0.5;
                sx += v * px;
                sy += v * py;
                sw += v;
            }
        }
        [sx / sw, sy / sw]
    }

    #[test]
    fn dots_follow_their_points_under_random_affines() {
        let pts = [[40.5, 30.5], [100.5, 50.5], [70.5, 90.5], [120.5, 95.5]];
        let example = dots(160, 120, &pts);
        let config = AugmentConfig {
            brightness: 0.0,
            contrast: 0.0,
            border: BorderFill::Constant(-0.5),
            scale: Some([0.9, 1.1]),
            ..AugmentConfig::default()
        };
        for index in 0..20 {
            let mut rng = sample_rng(7, 0, index);
            let out = config.apply(&example, None, &mut rng);
            for p in out.points_in(160.0, 120.0) {
                if p[0] < 3.0 || p[1] < 3.0 || p[0] > 157.0 || p[1] > 117.0 {
                    continue; // pushed off the image
                }
                let found = bright_centroid(&out, p, 4.0);
                let err = (found[0] - p[0]).hypot(found[1] - p[1]);
                assert!(
                    err < 1.0,
                    "draw {index}: dot at {found:?}, point at {p:?} ({err} px)"
                );
            }
        }
    }

    #[test]
    fn identity_changes_nothing() {
        let example = dots(80, 60, &[[10.5, 20.5], [50.5, 40.5]]);
        let draw = AugmentDraw {
            affine: Affine::IDENTITY,
            brightness: 0.0,
            contrast: 1.0,
            flipped: false,
            occluder: None,
        };
        let out = warp(&example, &draw, BorderFill::Replicate);
        assert_eq!(out.points, example.points);
        for (a, b) in out.pixels.iter().zip(&example.pixels) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn same_seed_same_draw_and_different_index_different_draw() {
        let config = AugmentConfig::default();
        let a = config.draw(&mut sample_rng(3, 2, 5), 160, 120, true);
        let b = config.draw(&mut sample_rng(3, 2, 5), 160, 120, true);
        let c = config.draw(&mut sample_rng(3, 2, 6), 160, 120, true);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn flip_mirrors_image_and_swaps_partner_points() {
        // Two points mirrored about the vertical centre line, declared partners.
        let example = dots(80, 60, &[[20.5, 30.5], [59.5, 30.5], [40.0, 10.5]]);
        let config = AugmentConfig {
            translate: 0.0,
            rotate_degrees: 0.0,
            shear: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            mirror: true,
            ..AugmentConfig::default()
        };
        let (mut flipped_seen, mut kept_seen) = (false, false);
        for index in 0..16 {
            let mut rng = sample_rng(1, 0, index);
            let draw = config.draw(&mut sample_rng(1, 0, index), 80, 60, true);
            let out = config.apply(&example, Some(&[1, 0, 2]), &mut rng);
            // Partners swap places, so each index keeps its position; the midline point stays.
            for (a, b) in out.points.iter().zip(&example.points) {
                assert!(
                    (a[0] - b[0]).abs() < 1e-5 && (a[1] - b[1]).abs() < 1e-5,
                    "{a:?} vs {b:?}"
                );
            }
            flipped_seen |= draw.flipped;
            kept_seen |= !draw.flipped;
            if draw.flipped {
                // The bright dot that was at x=20.5 is now at 80-20.5=59.5, same as before by symmetry;
                // an asymmetric pixel shows the mirror: column 0 goes to column 79.
                let mut marked = example.clone();
                marked.pixels[30 * 80] = 0.5;
                let out = config.apply(&marked, Some(&[1, 0, 2]), &mut sample_rng(1, 0, index));
                assert_eq!(out.pixels[30 * 80 + 79], 0.5);
            }
        }
        assert!(flipped_seen && kept_seen, "about half the draws flip");
    }

    #[test]
    fn occlusion_hides_a_rectangle_and_keeps_the_points() {
        let example = dots(80, 60, &[[20.5, 30.5], [59.5, 30.5]]);
        let still = AugmentConfig {
            translate: 0.0,
            rotate_degrees: 0.0,
            shear: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            ..AugmentConfig::default()
        };
        let occluded = AugmentConfig {
            occlusion: 1.0,
            ..still.clone()
        };
        // Without occlusion the draws are the same as before the option existed.
        let plain = still.draw(&mut sample_rng(5, 1, 2), 80, 60, false);
        assert_eq!(plain.occluder, None);
        for index in 0..8 {
            let draw = occluded.draw(&mut sample_rng(5, 1, index), 80, 60, false);
            let rect = draw.occluder.expect("occlusion 1.0 always occludes");
            assert!(rect.left >= 0.0 && rect.left + rect.width <= 1.0 + 1e-6);
            assert!(rect.top >= 0.0 && rect.top + rect.height <= 1.0 + 1e-6);
            let out = warp(&example, &draw, BorderFill::Replicate);
            assert_eq!(out.points, example.points);
            let changed = out
                .pixels
                .iter()
                .zip(&example.pixels)
                .filter(|(a, b)| (*a - *b).abs() > 1e-6)
                .count();
            let area = rect.width * 80.0 * rect.height * 60.0;
            assert!(
                changed as f32 > 0.5 * area && changed as f32 <= area + 140.0,
                "{changed} pixels changed for a {area} px rectangle"
            );
            // The same draw fills the same noise.
            assert_eq!(
                warp(&example, &draw, BorderFill::Replicate).pixels,
                out.pixels
            );
        }
    }

    #[test]
    fn inverse_undoes_the_map() {
        let m = Affine::translation(3.0, -2.0)
            .compose(Affine::rotation(0.3))
            .compose(Affine::shear(0.08));
        let p = [12.0, 7.0];
        let q = m.inverse().unwrap().apply(m.apply(p));
        assert!((q[0] - p[0]).abs() < 1e-4 && (q[1] - p[1]).abs() < 1e-4);
    }
}
