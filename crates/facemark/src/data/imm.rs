//! The IMM face database: 240 photos (640x480) of 40 people, 58 landmarks each, in `.asf` files.
//!
//! File names are `PP-Vg.jpg` / `PP-Vg.asf`: person `PP` (01-40), image type `V` (1-6), sex `g`.
//! An `.asf` file holds comments (`#`), a point count, one line per point with at least seven
//! whitespace-separated fields `<path> <type> <x> <y> <point> <from> <to>` (x, y relative to the
//! image size; extra fields ignored), then the host image's file name.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use super::{DataError, Example, Point, load_gray};

/// Number of landmarks in every IMM annotation.
pub const IMM_POINTS: usize = 58;
/// Zero-based index of the nose tip among the 58 IMM points.
pub const NOSE_TIP: usize = 52;
/// Size of every IMM photo.
pub const IMM_IMAGE_SIZE: (u32, u32) = (640, 480);
/// Each landmark's left/right mirror partner, as [`mirror_permutation`] derives it from the data
/// (a test checks the two agree): the jaw reverses, the eyes and brows swap, the midline keeps.
pub const IMM_MIRROR: [usize; IMM_POINTS] = [
    12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 21, 22, 23, 24, 25, 26, 27, 28, 13, 14, 15, 16, 17,
    18, 19, 20, 34, 35, 36, 37, 38, 29, 30, 31, 32, 33, 43, 42, 41, 40, 39, 46, 45, 44, 57, 56, 55,
    54, 53, 52, 51, 50, 49, 48, 47,
];
/// Where the official archive can be had.
pub const IMM_DOWNLOAD: &str = "https://www2.imm.dtu.dk/~aam/datasets/imm_face_db.zip";

/// One point line of an `.asf` file.
#[derive(Debug, Clone, PartialEq)]
pub struct AsfPoint {
    /// Contour the point belongs to (0 jaw, 1-2 eyes, 3-4 brows, 5 mouth, 6 nose).
    pub path: u32,
    /// Position relative to the image size, in `[0, 1]`.
    pub relative: Point,
}

/// A parsed `.asf` annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct AsfShape {
    pub points: Vec<AsfPoint>,
    /// The image the annotation names, if the file names one.
    pub host_image: Option<String>,
}

/// One IMM face: its photo and 58 landmarks in the photo's pixel coordinates.
#[derive(Debug, Clone)]
pub struct ImmFace {
    /// Person number, 1-40.
    pub person: u32,
    /// Image type, 1-6 (see the data set's documentation).
    pub image_type: u32,
    pub image_path: PathBuf,
    /// Landmarks in pixels of the 640x480 photo.
    pub points: Vec<Point>,
}

/// Reads an `.asf` file.
pub fn read_asf(path: &Path) -> Result<AsfShape, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    // The files are latin-1; only ASCII matters for the fields we read.
    let text: String = bytes.iter().map(|&b| b as char).collect();
    parse_asf(&text, path)
}

/// Parses the text of an `.asf` file; `path` only names the file in errors.
pub fn parse_asf(text: &str, path: &Path) -> Result<AsfShape, DataError> {
    let malformed = |line: usize, reason: String| DataError::MalformedLine {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));

    let (count_line, count_text) = lines.next().ok_or_else(|| DataError::Malformed {
        path: path.to_owned(),
        reason: "no point count (the file has only comments or is empty)".into(),
    })?;
    let count: usize = count_text.parse().map_err(|_| {
        malformed(
            count_line,
            format!("expected the point count, found {count_text:?}"),
        )
    })?;

    // The count is the file's word: reserve no more than a real file needs (a count of 10^19
    // once overflowed the capacity, a panic found by tests/fuzz.rs).
    let mut points = Vec::with_capacity(count.min(4 * IMM_POINTS));
    let mut last_line = count_line;
    for _ in 0..count {
        let (line, text) = lines.next().ok_or_else(|| DataError::Malformed {
            path: path.to_owned(),
            reason: format!(
                "expected {count} points, found {} (file ends at line {last_line})",
                points.len()
            ),
        })?;
        last_line = line;
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() < 7 {
            return Err(malformed(
                line,
                format!(
                    "a point line needs at least 7 fields, found {}",
                    fields.len()
                ),
            ));
        }
        let path_id: u32 = fields[0].parse().map_err(|_| {
            malformed(
                line,
                format!("path number {:?} is not an integer", fields[0]),
            )
        })?;
        let coord = |i: usize, name: &str| -> Result<f32, DataError> {
            let v: f32 = fields[i]
                .parse()
                .map_err(|_| malformed(line, format!("{name} {:?} is not a number", fields[i])))?;
            if !v.is_finite() || !(-0.5..=1.5).contains(&v) {
                return Err(malformed(
                    line,
                    format!("{name} {v} is not a relative coordinate"),
                ));
            }
            Ok(v)
        };
        let x = coord(2, "x")?;
        let y = coord(3, "y")?;
        points.push(AsfPoint {
            path: path_id,
            relative: [x, y],
        });
    }
    let host_image = lines.next().map(|(_, l)| l.to_string());
    Ok(AsfShape { points, host_image })
}

/// Parses `PP-Vg` (a file stem) into person and image type.
fn parse_stem(stem: &str) -> Option<(u32, u32)> {
    let (person, rest) = stem.split_once('-')?;
    let person: u32 = person.parse().ok()?;
    let image_type = rest.get(..1)?.parse().ok()?;
    Some((person, image_type))
}

/// Loads every face of an IMM folder, sorted by person and image type.
///
/// A missing or incomplete folder is one error that says what is expected and where to get it.
pub fn load_imm(dir: &Path) -> Result<Vec<ImmFace>, DataError> {
    let missing = |what: String| {
        DataError::MissingDataSet(format!(
            "IMM face database not found: {what}.\nExpected {dir}/ holding the 240 photos and \
             annotations of the IMM face database (01-1m.jpg + 01-1m.asf ... 40-6m.jpg + \
             40-6m.asf). Download the official archive from {IMM_DOWNLOAD}, unpack it there, \
             and point facemark at the data folder with --data DIR or FACEMARK_DATA.",
            dir = dir.display()
        ))
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| missing(format!("cannot read {}: {e}", dir.display())))?;
    let mut faces = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| DataError::Io {
                path: dir.to_owned(),
                source,
            })?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("asf") {
            continue;
        }
        let Some((person, image_type)) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(parse_stem)
        else {
            continue;
        };
        let shape = read_asf(&path)?;
        if shape.points.len() != IMM_POINTS {
            return Err(DataError::Malformed {
                path,
                reason: format!("expected {IMM_POINTS} points, found {}", shape.points.len()),
            });
        }
        let image_path = path.with_extension("jpg");
        if !image_path.exists() {
            return Err(missing(format!(
                "{} has no image {}",
                path.display(),
                image_path.display()
            )));
        }
        let (w, h) = IMM_IMAGE_SIZE;
        let points = shape
            .points
            .iter()
            .map(|p| [p.relative[0] * w as f32, p.relative[1] * h as f32])
            .collect();
        faces.push(ImmFace {
            person,
            image_type,
            image_path,
            points,
        });
    }
    if faces.is_empty() {
        return Err(missing(format!(
            "no PP-Vg.asf annotations in {}",
            dir.display()
        )));
    }
    faces.sort_by_key(|f| (f.person, f.image_type));
    Ok(faces)
}

/// Splits faces by person: those whose person number lies in `train_persons` train, the rest
/// validate. Splitting by person keeps a face's other photos out of its validation score.
pub fn split_by_person(
    faces: Vec<ImmFace>,
    train_persons: &RangeInclusive<u32>,
) -> (Vec<ImmFace>, Vec<ImmFace>) {
    faces
        .into_iter()
        .partition(|f| train_persons.contains(&f.person))
}

/// Decodes the faces' photos in parallel and turns each into a model-ready [`Example`] of
/// `width` x `height` holding the landmarks `point_indices`.
pub fn examples(
    faces: &[ImmFace],
    point_indices: &[usize],
    width: usize,
    height: usize,
) -> Result<Vec<Example>, DataError> {
    use rayon::prelude::*;
    faces
        .par_iter()
        .map(|face| {
            let gray = load_gray(&face.image_path)?;
            let points: Vec<Point> = point_indices.iter().map(|&i| face.points[i]).collect();
            Ok(Example::from_gray(&gray, &points, width, height))
        })
        .collect()
}

/// The left/right partner of each landmark, derived from the data: the mean shape of the frontal
/// neutral photos (type 1) mirrored about its own midline (see [`super::derive_mirror`]).
pub fn mirror_permutation(faces: &[ImmFace]) -> Option<Vec<usize>> {
    let frontal: Vec<&ImmFace> = faces.iter().filter(|f| f.image_type == 1).collect();
    let k = frontal.first()?.points.len();
    let mut mean = vec![[0.0f32; 2]; k];
    for face in &frontal {
        for (m, p) in mean.iter_mut().zip(&face.points) {
            m[0] += p[0] / frontal.len() as f32;
            m[1] += p[1] / frontal.len() as f32;
        }
    }
    super::derive_mirror(&mean)
}

impl ImmFace {
    /// The file stem, e.g. `12-3m`, for captions.
    pub fn name(&self) -> String {
        self.image_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "######\n# AAM Shape File\n######\n\n# number of model points\n3\n\n\
# model points\n#  format: <path#> <type> <x rel.> <y rel.> <point#> <connects from> <connects to>\n\
0 \t4 \t0.35763609 \t0.64077979 \t0 \t0 \t1\n\
0 \t4 \t0.25 \t0.5 \t1 \t0 \t2 \t0.00 \t0.00 \t0.00\n\
6 \t0 \t0.5 \t0.75 \t2 \t1 \t0\n\n# host image\n01-1m.jpg\n";

    fn parse(text: &str) -> Result<AsfShape, DataError> {
        parse_asf(text, Path::new("t.asf"))
    }

    #[test]
    fn parses_points_ignoring_comments_and_extra_fields() {
        let shape = parse(GOOD).unwrap();
        assert_eq!(shape.points.len(), 3);
        assert_eq!(shape.points[0].relative, [0.357_636_1, 0.640_779_8]);
        assert_eq!(shape.points[1].relative, [0.25, 0.5]);
        assert_eq!(shape.points[2].path, 6);
        assert_eq!(shape.host_image.as_deref(), Some("01-1m.jpg"));
    }

    fn error_line(text: &str) -> (usize, String) {
        match parse(text) {
            Err(DataError::MalformedLine { line, reason, .. }) => (line, reason),
            other => panic!("expected a malformed-line error, got {other:?}"),
        }
    }

    #[test]
    fn bad_count_names_its_line() {
        let (line, reason) = error_line("# c\nfifty\n");
        assert_eq!(line, 2);
        assert!(reason.contains("point count"), "{reason}");
    }

    #[test]
    fn short_point_line_names_its_line() {
        let (line, reason) = error_line("2\n0 4 0.1 0.2 0 0 1\n0 4 0.1 0.2\n");
        assert_eq!(line, 3);
        assert!(reason.contains("7 fields"), "{reason}");
    }

    #[test]
    fn non_numeric_coordinate_names_its_line() {
        let (line, reason) = error_line("1\n0 4 0.1 abc 0 0 1\n");
        assert_eq!(line, 2);
        assert!(reason.contains("y"), "{reason}");
    }

    #[test]
    fn out_of_range_coordinate_is_rejected() {
        let (line, _) = error_line("1\n0 4 412.0 0.2 0 0 1\n");
        assert_eq!(line, 2);
    }

    #[test]
    fn huge_point_count_is_an_error_not_a_capacity_overflow() {
        for count in ["18446744073709551615", "1000000000000"] {
            let err = parse_asf(&format!("{count}\n"), Path::new("x.asf")).unwrap_err();
            assert!(err.to_string().contains("x.asf"), "{err}");
        }
    }

    #[test]
    fn truncated_file_is_an_error() {
        let err = parse("3\n0 4 0.1 0.2 0 0 1\n").unwrap_err();
        assert!(
            err.to_string().contains("expected 3 points, found 1"),
            "{err}"
        );
        assert!(parse("# only comments\n").is_err());
    }

    #[test]
    fn stems_give_person_and_type() {
        assert_eq!(parse_stem("07-3m"), Some((7, 3)));
        assert_eq!(parse_stem("40-6f"), Some((40, 6)));
        assert_eq!(parse_stem("readme"), None);
    }

    fn face(person: u32) -> ImmFace {
        ImmFace {
            person,
            image_type: 1,
            image_path: PathBuf::new(),
            points: vec![],
        }
    }

    #[test]
    fn split_is_by_person() {
        let faces = (1..=40).map(face).collect();
        let (train, val) = split_by_person(faces, &(1..=32));
        assert_eq!(train.len(), 32);
        assert_eq!(val.len(), 8);
        assert!(val.iter().all(|f| f.person >= 33));
    }
}
