//! The iBUG / 300-W `.pts` landmark format.
//!
//! Two forms occur in the wild, and both are read:
//! - headed (the official 300-W files):
//!   ```text
//!   version: 1
//!   n_points:  68
//!   {
//!   97.064752 119.810627
//!   ...
//!   }
//!   ```
//! - headless: just the `x y` lines (some HELEN / AFW redistributions).
//!
//! iBUG coordinates are 1-based: the centre of the first pixel is `1.0`. The library's convention
//! puts that centre at `0.5` (pixel `i` covers `[i, i + 1)`), so reading subtracts `0.5` and
//! writing adds it back.

use std::path::{Path, PathBuf};

use super::{AnnotatedFace, DataError, LabeledImage, Point, PointSource, tight_box};

/// Offset from iBUG's 1-based coordinates to the library's: `ours = pts + PTS_TO_OURS`.
const PTS_TO_OURS: f32 = -0.5;

/// Image extensions [`load_pts_folder`] pairs with a `.pts` file (compared case-insensitively).
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Where the parser is in a headed file.
#[derive(Clone, Copy, PartialEq)]
enum State {
    /// Before `{`: `version:` / `n_points:` lines.
    Header,
    /// Between `{` and `}`: point lines.
    Points,
    /// After `}`: only blank lines may follow.
    Done,
}

/// Parses the text of a `.pts` file into points in the library's convention; `path` only names
/// the file in errors.
pub fn parse_pts(text: &str, path: &Path) -> Result<Vec<Point>, DataError> {
    let malformed = |line: usize, reason: String| DataError::MalformedLine {
        path: path.to_owned(),
        line,
        reason,
    };
    // Blank lines carry nothing in either form; a UTF-8 byte-order mark is not content either.
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_start_matches('\u{feff}').trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let Some(&(_, first)) = lines.first() else {
        return Err(DataError::Malformed {
            path: path.to_owned(),
            reason: "empty file, expected landmark points".into(),
        });
    };
    let headed = first == "{" || header_field(first).is_some();
    if !headed {
        return lines
            .iter()
            .map(|&(n, l)| parse_point(l).map_err(|reason| malformed(n, reason)))
            .collect();
    }

    let mut state = State::Header;
    let mut declared: Option<(usize, usize)> = None; // (n_points, its line)
    let mut points = Vec::new();
    for &(n, l) in &lines {
        match state {
            State::Header if l == "{" => state = State::Points,
            State::Header => match header_field(l) {
                Some(("version", value)) => {
                    value.parse::<u32>().map_err(|_| {
                        malformed(n, format!("version is not an integer: `{value}`"))
                    })?;
                }
                Some(("n_points", value)) => {
                    let count = value
                        .parse::<usize>()
                        .map_err(|_| malformed(n, format!("n_points is not a count: `{value}`")))?;
                    declared = Some((count, n));
                }
                _ => {
                    return Err(malformed(
                        n,
                        format!("expected `version: N`, `n_points: N` or `{{`, found `{l}`"),
                    ));
                }
            },
            State::Points if l == "}" => {
                if let Some((count, _)) = declared
                    && count != points.len()
                {
                    return Err(malformed(
                        n,
                        format!(
                            "n_points says {count} but {} points precede `}}`",
                            points.len()
                        ),
                    ));
                }
                state = State::Done;
            }
            State::Points => points.push(parse_point(l).map_err(|reason| malformed(n, reason))?),
            State::Done => {
                return Err(malformed(n, format!("unexpected text after `}}`: `{l}`")));
            }
        }
    }
    let last_line = text.lines().count().max(1);
    match state {
        State::Done => Ok(points),
        State::Header => Err(malformed(
            last_line,
            "file ends before the `{` that opens the points".into(),
        )),
        State::Points => Err(malformed(
            last_line,
            "file ends without the closing `}`".into(),
        )),
    }
}

/// Splits a `key: value` header line; `None` for anything else.
fn header_field(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(':')?;
    let key = key.trim();
    matches!(key, "version" | "n_points").then_some((key, value.trim()))
}

/// Parses one `x y` line (1-based iBUG coordinates) into the library's convention.
fn parse_point(line: &str) -> Result<Point, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [x, y] = fields[..] else {
        return Err(format!(
            "expected a point `x y`, found {} fields: `{line}`",
            fields.len()
        ));
    };
    let coordinate = |name: &str, s: &str| {
        s.parse::<f32>()
            .ok()
            .filter(|v| v.is_finite())
            .map(|v| v + PTS_TO_OURS)
            .ok_or_else(|| format!("{name} is not a finite number: `{s}`"))
    };
    Ok([coordinate("x", x)?, coordinate("y", y)?])
}

/// Reads a `.pts` file into points in the library's convention.
pub fn read_pts(path: &Path) -> Result<Vec<Point>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    // The format is ASCII; decoding bytes as latin-1 never fails, so stray bytes surface as a
    // malformed line rather than as an I/O error.
    let text: String = bytes.iter().map(|&b| char::from(b)).collect();
    parse_pts(&text, path)
}

/// Writes points (library convention) in the headed 300-W form: 1-based coordinates, 6 decimals,
/// `n_points:` followed by two spaces as in the official files, and a newline after `}`.
pub fn format_pts(points: &[Point]) -> String {
    let mut out = format!("version: 1\nn_points:  {}\n{{\n", points.len());
    for [x, y] in points {
        out.push_str(&format!("{:.6} {:.6}\n", x - PTS_TO_OURS, y - PTS_TO_OURS));
    }
    out.push_str("}\n");
    out
}

/// Loads every image (`jpg`, `jpeg`, `png`) directly in `dir` that has a `.pts` beside it (same
/// stem), sorted by file name. Each becomes one face whose box is the tight box of its points,
/// because `.pts` files carry no face box. Images without a `.pts` are skipped.
pub fn load_pts_folder(dir: &Path) -> Result<Vec<LabeledImage>, DataError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| DataError::Io { path, source }
    };
    let mut images: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)));
        if is_image && path.is_file() && path.with_extension("pts").is_file() {
            images.push(path);
        }
    }
    images.sort();
    images
        .into_iter()
        .map(|image_path| {
            let pts_path = image_path.with_extension("pts");
            let points = read_pts(&pts_path)?;
            let bbox = tight_box(&points).ok_or_else(|| DataError::Malformed {
                path: pts_path.clone(),
                reason: "no points, so no face box".into(),
            })?;
            Ok(LabeledImage {
                image_path,
                size: None,
                faces: vec![AnnotatedFace {
                    bbox,
                    points,
                    source: PointSource::Pts,
                }],
            })
        })
        .collect()
}

/// Replaces a face's label-file points by those of the `.pts` file beside its image (same stem)
/// when that file has the same number of points and each agrees with the label's point to within
/// a pixel: dlib XML stores whole pixels, the `.pts` files the annotators' sub-pixel coordinates.
/// Faces without such a file, or whose file disagrees, keep their points. An unreadable `.pts`
/// file counts as none: the label file stays the truth.
pub fn prefer_pts_points(images: &mut [LabeledImage]) {
    for image in images {
        let pts_path = image.image_path.with_extension("pts");
        if image.faces.is_empty() || !pts_path.is_file() {
            continue;
        }
        let Ok(points) = read_pts(&pts_path) else {
            continue;
        };
        let agrees = |face: &AnnotatedFace| {
            face.points.len() == points.len()
                && face
                    .points
                    .iter()
                    .zip(&points)
                    .all(|(a, b)| (a[0] - b[0]).abs() <= 1.0 && (a[1] - b[1]).abs() <= 1.0)
        };
        if let Some(face) = image.faces.iter_mut().find(|f| agrees(f)) {
            face.points = points;
            face.source = PointSource::Pts;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ibug() -> std::path::PathBuf {
        crate::test_data::data_root().join("ibug_300w")
    }

    fn parse(text: &str) -> Result<Vec<Point>, DataError> {
        parse_pts(text, Path::new("t.pts"))
    }

    fn error_line(text: &str) -> (usize, String) {
        match parse(text) {
            Err(DataError::MalformedLine { line, reason, .. }) => (line, reason),
            other => panic!("expected a malformed-line error, got {other:?}"),
        }
    }

    #[test]
    fn headed_form_converts_to_our_convention() {
        let text = "version: 1\nn_points:  3\n{\n1.0 1.0\n10.5 20.25\n100 0.5\n}\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![[0.5, 0.5], [10.0, 19.75], [99.5, 0.0]]
        );
    }

    #[test]
    fn headless_form_and_crlf_are_read() {
        let text = "1.0 2.0\r\n\r\n  3.5\t4.5  \r\n";
        assert_eq!(parse(text).unwrap(), vec![[0.5, 1.5], [3.0, 4.0]]);
    }

    #[test]
    fn format_then_parse_round_trips() {
        let points = vec![[0.5, 0.5], [12.25, 300.125], [-1.5, 7.0]];
        let text = format_pts(&points);
        assert_eq!(
            text,
            "version: 1\nn_points:  3\n{\n1.000000 1.000000\n12.750000 300.625000\n\
             -1.000000 7.500000\n}\n"
        );
        assert_eq!(parse(&text).unwrap(), points);
        assert_eq!(parse(&format_pts(&[])).unwrap(), Vec::<Point>::new());
    }

    #[test]
    fn n_points_mismatch_is_an_error() {
        let (line, reason) = error_line("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n");
        assert_eq!(line, 6);
        assert!(reason.contains("n_points says 3 but 2"), "{reason}");
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let (line, reason) = error_line("version: 1\nn_points: 2\n{\n1 2\n3 abc\n}\n");
        assert_eq!(line, 5);
        assert!(reason.contains("y is not a finite number"), "{reason}");

        let (line, reason) = error_line("1 2\n3 4 5\n");
        assert_eq!(line, 2);
        assert!(reason.contains("found 3 fields"), "{reason}");

        let (line, reason) = error_line("version: 1\nn_points: x\n{\n}\n");
        assert_eq!(line, 2);
        assert!(reason.contains("n_points"), "{reason}");

        let (line, reason) = error_line("version: 1\nbogus\n{\n}\n");
        assert_eq!(line, 2);
        assert!(reason.contains("bogus"), "{reason}");

        let (line, _) = error_line("version: 1\nn_points: 1\n{\n1 2\n}\n3 4\n");
        assert_eq!(line, 6);
    }

    #[test]
    fn missing_brace_is_an_error() {
        let (line, reason) = error_line("version: 1\nn_points: 1\n{\n1 2\n");
        assert_eq!(line, 4);
        assert!(reason.contains("closing `}`"), "{reason}");
        let (_, reason) = error_line("version: 1\nn_points: 1\n");
        assert!(reason.contains("`{`"), "{reason}");
        assert!(matches!(parse("  \n"), Err(DataError::Malformed { .. })));
    }

    #[test]
    fn missing_file_names_it() {
        let err = read_pts(Path::new("/nonexistent/x.pts")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.pts"), "{err}");
    }

    #[test]
    fn folder_pairs_images_with_pts_and_boxes_tightly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.JPG"), b"").unwrap();
        std::fs::write(dir.path().join("b.pts"), "2 3\n6 11\n4 5\n").unwrap();
        std::fs::write(dir.path().join("a.png"), b"").unwrap();
        std::fs::write(dir.path().join("a.pts"), format_pts(&[[1.0, 1.0]])).unwrap();
        std::fs::write(dir.path().join("lonely.jpg"), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let images = load_pts_folder(dir.path()).unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].image_path, dir.path().join("a.png"));
        assert_eq!(images[1].image_path, dir.path().join("b.JPG"));
        assert_eq!(images[1].size, None);
        let face = &images[1].faces[0];
        assert_eq!(face.points, vec![[1.5, 2.5], [5.5, 10.5], [3.5, 4.5]]);
        assert_eq!(face.bbox, crate::data::FaceBox::new(1.5, 2.5, 4.0, 8.0));
        assert!(load_pts_folder(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn real_300w_file_has_68_points() {
        let path = ibug().join("lfpw/testset/image_0001.pts");
        if !path.is_file() {
            eprintln!("skipped: {} is absent", path.display());
            return;
        }
        let points = read_pts(&path).unwrap();
        assert_eq!(points.len(), 68);
        // The file's first line is `97.064752 119.810627`.
        assert!((points[0][0] - 96.564_75).abs() < 1e-4);
        assert!((points[0][1] - 119.310_63).abs() < 1e-4);
        // Formatting keeps the layout; f32 keeps about 7 digits, so values agree to ~1e-5.
        let text = std::fs::read_to_string(&path).unwrap();
        let formatted = format_pts(&points);
        assert_eq!(formatted.lines().count(), text.lines().count());
        assert!(formatted.starts_with("version: 1\nn_points:  68\n{\n"));
        assert!(text.starts_with("version: 1\nn_points:  68\n{\n"));
        for (a, b) in parse(&formatted).unwrap().iter().zip(&points) {
            assert!((a[0] - b[0]).abs() < 1e-4 && (a[1] - b[1]).abs() < 1e-4);
        }
    }

    #[test]
    fn real_folder_loads() {
        let dir = ibug().join("lfpw/testset");
        if !dir.is_dir() {
            eprintln!("skipped: {} is absent", dir.display());
            return;
        }
        let images = load_pts_folder(&dir).unwrap();
        assert_eq!(images.len(), 224);
        assert!(images.iter().all(|i| i.faces[0].points.len() == 68));
    }
}
