//! Landmark schemes: how many points a markup has, which are left/right partners, which distance
//! normalises the error, and which points join into contours when drawn. Everything that used to
//! assume the 68-point iBUG markup asks a [`LandmarkScheme`] instead.

use serde::{Deserialize, Serialize};

use crate::data::ibug::{IBUG_MIRROR, IBUG_POINTS, LEFT_EYE, OUTER_EYE_CORNERS, RIGHT_EYE};
use crate::data::imm::{IMM_MIRROR, IMM_POINTS};
use crate::data::{Point, derive_mirror};

/// A distance that errors are divided by: from the mean of the `from` points to the mean of the
/// `to` points of the true shape (the outer eye corners, say, or the two eye centres).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normaliser {
    /// Short name used in reports: `inter_ocular` reports as `nme_inter_ocular`.
    pub name: String,
    pub from: Vec<usize>,
    pub to: Vec<usize>,
}

impl Normaliser {
    fn between(
        name: &str,
        from: impl IntoIterator<Item = usize>,
        to: impl IntoIterator<Item = usize>,
    ) -> Self {
        Self {
            name: name.into(),
            from: from.into_iter().collect(),
            to: to.into_iter().collect(),
        }
    }

    /// The distance for `shape`; `None` when the shape lacks a named point.
    pub fn distance(&self, shape: &[Point]) -> Option<f32> {
        let a = mean_of(shape, &self.from)?;
        let b = mean_of(shape, &self.to)?;
        Some((a[0] - b[0]).hypot(a[1] - b[1]))
    }
}

fn mean_of(shape: &[Point], indices: &[usize]) -> Option<Point> {
    if indices.is_empty() {
        return None;
    }
    let mut sum = [0.0f32; 2];
    for &i in indices {
        let p = shape.get(i)?;
        sum[0] += p[0];
        sum[1] += p[1];
    }
    let n = indices.len() as f32;
    Some([sum[0] / n, sum[1] / n])
}

/// A landmark markup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandmarkScheme {
    /// `ibug68`, `imm58`, `nose`, or `custom` for a markup read from label files.
    pub name: String,
    pub points: usize,
    /// Each point's left/right partner (`mirror[mirror[i]] == i`); `None` when the markup has no
    /// known symmetry, which turns mirroring (augmentation and test-time) off.
    #[serde(default)]
    pub mirror: Option<Vec<usize>>,
    /// The distances errors are normalised by; the first is the scheme's own NME. Empty: the
    /// diagonal of the face box.
    #[serde(default)]
    pub normalisers: Vec<Normaliser>,
    /// Runs of points joined by lines when drawn (jaw, brows, eyes, ...); each run is open unless
    /// it repeats its first point at the end.
    #[serde(default)]
    pub contours: Vec<Vec<usize>>,
}

impl LandmarkScheme {
    /// The 68-point iBUG markup of 300-W: inter-ocular (outer eye corners) and inter-pupil
    /// normalisers, and the contours dlib's viewer draws.
    pub fn ibug68() -> Self {
        let closed = |r: std::ops::Range<usize>| {
            let mut v: Vec<usize> = r.clone().collect();
            v.push(r.start);
            v
        };
        Self {
            name: "ibug68".into(),
            points: IBUG_POINTS,
            mirror: Some(IBUG_MIRROR.to_vec()),
            normalisers: vec![
                Normaliser::between("inter_ocular", [OUTER_EYE_CORNERS.0], [OUTER_EYE_CORNERS.1]),
                Normaliser::between("inter_pupil", RIGHT_EYE, LEFT_EYE),
            ],
            contours: vec![
                (0..17).collect(),
                (17..22).collect(),
                (22..27).collect(),
                (27..31).collect(),
                (30..36).chain([30]).collect(),
                closed(36..42),
                closed(42..48),
                closed(48..60),
                closed(60..68),
            ],
        }
    }

    /// All 58 IMM points (errors normalised by the face box's diagonal).
    pub fn imm58() -> Self {
        Self {
            name: "imm58".into(),
            points: IMM_POINTS,
            mirror: Some(IMM_MIRROR.to_vec()),
            normalisers: Vec::new(),
            contours: Vec::new(),
        }
    }

    /// The IMM nose tip alone: its own mirror partner.
    pub fn nose() -> Self {
        Self {
            name: "nose".into(),
            points: 1,
            mirror: Some(vec![0]),
            normalisers: Vec::new(),
            contours: Vec::new(),
        }
    }

    /// The scheme for shapes of `points` points read from label files: iBUG when there are 68,
    /// else a custom markup whose mirror pairs are derived from `mean_shape` (see
    /// [`derive_mirror`]) and whose errors are normalised by the box diagonal.
    pub fn for_labels(points: usize, mean_shape: &[Point]) -> Self {
        if points == IBUG_POINTS {
            return Self::ibug68();
        }
        Self {
            name: "custom".into(),
            points,
            mirror: derive_mirror(mean_shape),
            normalisers: Vec::new(),
            contours: Vec::new(),
        }
    }

    /// The scheme's own normalising distance for a true shape and its face box (the box diagonal
    /// when the scheme names no normaliser).
    pub fn normalising_distance(&self, shape: &[Point], bbox_diagonal: f32) -> f32 {
        self.normalisers
            .first()
            .and_then(|n| n.distance(shape))
            .unwrap_or(bbox_diagonal)
    }

    /// Name of the scheme's own normaliser, for reports.
    pub fn normaliser_name(&self) -> &str {
        self.normalisers
            .first()
            .map_or("box_diagonal", |n| n.name.as_str())
    }

    /// Checks that `mirror` is a permutation of the points that is its own inverse.
    pub fn validate(&self) -> Result<(), String> {
        if self.points == 0 {
            return Err(format!("landmark scheme {} has no points", self.name));
        }
        if let Some(mirror) = &self.mirror {
            let ok = mirror.len() == self.points
                && mirror
                    .iter()
                    .enumerate()
                    .all(|(i, &j)| j < self.points && mirror[j] == i);
            if !ok {
                return Err(format!(
                    "landmark scheme {}: the mirror pairs must pair each of the {} points with one partner",
                    self.name, self.points
                ));
            }
        }
        for n in &self.normalisers {
            if n.from.iter().chain(&n.to).any(|&i| i >= self.points) {
                return Err(format!(
                    "landmark scheme {}: normaliser {} names a point beyond {}",
                    self.name, n.name, self.points
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_schemes_are_valid() {
        for s in [
            LandmarkScheme::ibug68(),
            LandmarkScheme::imm58(),
            LandmarkScheme::nose(),
        ] {
            s.validate().unwrap();
        }
    }

    #[test]
    fn ibug_normalisers_measure_eye_distances() {
        let mut shape = vec![[0.0f32; 2]; 68];
        shape[36] = [10.0, 20.0];
        shape[45] = [40.0, 60.0];
        let s = LandmarkScheme::ibug68();
        assert_eq!(s.normalising_distance(&shape, 1.0), 50.0);
        assert_eq!(s.normaliser_name(), "inter_ocular");
        for i in RIGHT_EYE {
            shape[i] = [10.0, 10.0];
        }
        for i in LEFT_EYE {
            shape[i] = [30.0, 10.0];
        }
        assert_eq!(s.normalisers[1].distance(&shape), Some(20.0));
    }

    #[test]
    fn a_symmetric_five_point_shape_gets_its_mirror_pairs() {
        // Eye corners, nose tip, mouth corners.
        let mean = [
            [30.0, 40.0],
            [70.0, 40.0],
            [50.0, 60.0],
            [38.0, 80.0],
            [62.0, 80.0],
        ];
        assert_eq!(derive_mirror(&mean), Some(vec![1, 0, 2, 4, 3]));
        let s = LandmarkScheme::for_labels(5, &mean);
        assert_eq!(s.normaliser_name(), "box_diagonal");
        assert_eq!(s.normalising_distance(&mean, 141.0), 141.0);
        s.validate().unwrap();
    }

    #[test]
    fn an_asymmetric_shape_has_no_mirror() {
        assert_eq!(derive_mirror(&[[0.0, 0.0], [1.0, 0.0], [5.0, 3.0]]), None);
    }

    #[test]
    fn broken_mirror_pairs_are_refused() {
        let mut s = LandmarkScheme::nose();
        s.mirror = Some(vec![1]);
        assert!(s.validate().is_err());
    }
}
