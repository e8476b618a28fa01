//! The iBUG 68-point markup used by 300-W: jaw 0-16, right brow 17-21, left brow 22-26, nose 27-35,
//! right eye 36-41, left eye 42-47, mouth 48-67 (0-based; "right" is the subject's right).

/// Number of landmarks in the iBUG markup.
pub const IBUG_POINTS: usize = 68;
/// Outer eye corners: the inter-ocular distance of the 300-W benchmark.
pub const OUTER_EYE_CORNERS: (usize, usize) = (36, 45);
/// The two eyes' contours; the pupil is taken as each contour's mean (inter-pupil distance).
pub const RIGHT_EYE: std::ops::Range<usize> = 36..42;
pub const LEFT_EYE: std::ops::Range<usize> = 42..48;

/// Each landmark's mirror partner: a left-right flip of the face turns point `i` into point
/// `IBUG_MIRROR[i]` (the standard 68-point flip map).
pub const IBUG_MIRROR: [usize; IBUG_POINTS] = [
    16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, // jaw
    26, 25, 24, 23, 22, 21, 20, 19, 18, 17, // brows
    27, 28, 29, 30, 35, 34, 33, 32, 31, // nose
    45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40, // eyes
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, // outer lip
    64, 63, 62, 61, 60, 67, 66, 65, // inner lip
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_is_an_involution_that_swaps_eye_corners() {
        for (i, &j) in IBUG_MIRROR.iter().enumerate() {
            assert_eq!(IBUG_MIRROR[j], i, "partner of partner of {i}");
        }
        assert_eq!(IBUG_MIRROR[36], 45);
        assert_eq!(IBUG_MIRROR[39], 42);
        assert_eq!(IBUG_MIRROR[30], 30, "nose tip stays");
        assert_eq!(IBUG_MIRROR[8], 8, "chin stays");
    }
}
