//! dlib's imglab XML format (`save_image_dataset_metadata`), as used by dlib's shape-predictor
//! examples and the 300-W `labels_*.xml` files:
//!
//! ```text
//! <dataset><name>..</name><comment>..</comment><images>
//!   <image file='a.jpg' width='500' height='375'>
//!     <box top='90' left='194' width='37' height='37'>
//!       <part name='00' x='201' y='107'/>
//!     </box>
//!   </image>
//! </images></dataset>
//! ```
//!
//! dlib parts are 0-based integer pixels (the centre of the first pixel is `0`); the library puts
//! that centre at `0.5`, so reading adds `0.5` and writing takes the pixel that holds the point.
//! Boxes are inclusive integer pixels, which the library's [`FaceBox`] reads unchanged.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use roxmltree::{Document, Node, ParsingOptions};

use super::{AnnotatedFace, DataError, FaceBox, LabeledImage, Point, PointSource};

/// Offset from dlib part coordinates to the library's: `ours = xml + XML_TO_OURS`.
const XML_TO_OURS: f32 = 0.5;

/// Parses the text of a dlib XML file; `path` names the file in errors and its folder is what
/// relative `file` attributes are resolved against. Boxes marked `ignore='1'` are dropped (dlib
/// uses them to exclude faces from training and evaluation).
///
/// What is checked, and what is deliberately kept as given:
/// - Every kept box must be a box: finite, with a positive width and height. When the `<image>`
///   states its `width` and `height`, the box must also overlap the image and be at most
///   [`MAX_BOX_TO_IMAGE`](super::MAX_BOX_TO_IMAGE) times its longer side
///   ([`FaceBox::validate`]); an error names the file and the box's line.
/// - Points outside the image are kept: 300-W's crops cut through faces, so a chin or brow
///   point below or beside the image is real annotation, not an error.
/// - Duplicates are kept as given: an image listed twice is two entries, and two identical boxes
///   are two faces. Merging would silently change what a label file means (and dlib's tools keep
///   them too); a duplicate part name inside one box is an error, since it makes the box's point
///   order ambiguous.
/// - There is no cap on faces per image or images per file: a file with thousands of faces is
///   read in one linear pass (a test reads 5000 faces in one image).
pub fn parse_dlib_xml(text: &str, path: &Path) -> Result<Vec<LabeledImage>, DataError> {
    // dlib writes no DTD, but allowing one costs nothing (roxmltree guards entity expansion).
    let options = ParsingOptions {
        allow_dtd: true,
        ..ParsingOptions::default()
    };
    let doc =
        Document::parse_with_options(text, options).map_err(|e| DataError::MalformedLine {
            path: path.to_owned(),
            line: e.pos().row as usize,
            reason: format!("invalid XML: {e}"),
        })?;
    let reader = Reader { doc: &doc, path };
    let root = doc.root_element();
    if !root.has_tag_name("dataset") {
        return Err(reader.error(
            root,
            format!(
                "expected a <dataset> root element, found <{}>",
                root.tag_name().name()
            ),
        ));
    }
    let base = path.parent().unwrap_or(Path::new(""));
    let mut images = Vec::new();
    for list in root.children().filter(|n| n.has_tag_name("images")) {
        for image in list.children().filter(|n| n.has_tag_name("image")) {
            images.push(reader.image(image, base)?);
        }
    }
    Ok(images)
}

/// Reads a dlib XML file (see [`parse_dlib_xml`]).
pub fn read_dlib_xml(path: &Path) -> Result<Vec<LabeledImage>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    // dlib declares ISO-8859-1 but copies file names through as raw bytes, which on most systems
    // are UTF-8. So take UTF-8 when the bytes are valid UTF-8 and fall back to latin-1 (every byte
    // one char) otherwise; for the usual pure-ASCII files both agree. roxmltree ignores the
    // declared encoding, so the declaration can stay.
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|e| e.into_bytes().iter().map(|&b| char::from(b)).collect());
    parse_dlib_xml(&text, path)
}

/// Turns elements into library types, naming the line of whatever is wrong.
struct Reader<'d, 'input> {
    doc: &'d Document<'input>,
    path: &'d Path,
}

impl Reader<'_, '_> {
    fn line_at(&self, byte: usize) -> usize {
        self.doc.text_pos_at(byte).row as usize
    }

    fn error(&self, node: Node, reason: String) -> DataError {
        DataError::MalformedLine {
            path: self.path.to_owned(),
            line: self.line_at(node.range().start),
            reason,
        }
    }

    /// A required attribute, parsed; errors name the element and attribute.
    fn number<T: std::str::FromStr>(&self, node: Node, name: &str) -> Result<T, DataError> {
        let tag = node.tag_name().name();
        let attribute = node
            .attribute_node(name)
            .ok_or_else(|| self.error(node, format!("<{tag}> lacks the `{name}` attribute")))?;
        attribute
            .value()
            .trim()
            .parse()
            .map_err(|_| DataError::MalformedLine {
                path: self.path.to_owned(),
                line: self.line_at(attribute.range().start),
                reason: format!(
                    "<{tag}> attribute `{name}` is not a valid number: `{}`",
                    attribute.value()
                ),
            })
    }

    /// A required attribute as a finite `f32`.
    fn coordinate(&self, node: Node, name: &str) -> Result<f32, DataError> {
        let value: f32 = self.number(node, name)?;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(self.error(
                node,
                format!(
                    "<{}> attribute `{name}` is not finite",
                    node.tag_name().name()
                ),
            ))
        }
    }

    fn image(&self, node: Node, base: &Path) -> Result<LabeledImage, DataError> {
        let file = node
            .attribute("file")
            .ok_or_else(|| self.error(node, "<image> lacks the `file` attribute".into()))?;
        let size = match (node.has_attribute("width"), node.has_attribute("height")) {
            (false, false) => None,
            (true, true) => Some((self.number(node, "width")?, self.number(node, "height")?)),
            _ => {
                return Err(self.error(node, "<image> has only one of `width` and `height`".into()));
            }
        };
        let mut faces = Vec::new();
        for b in node.children().filter(|n| n.has_tag_name("box")) {
            if let Some(face) = self.face(b, size)? {
                faces.push(face);
            }
        }
        Ok(LabeledImage {
            image_path: base.join(file),
            size,
            faces,
        })
    }

    /// A `<box>` and its parts; `None` if the box is marked ignored. A kept box is validated
    /// against the image's stated `size`, or on its own without one.
    fn face(
        &self,
        node: Node,
        size: Option<(u32, u32)>,
    ) -> Result<Option<AnnotatedFace>, DataError> {
        let ignored = match node.attribute("ignore").map(str::trim) {
            None | Some("0" | "false") => false,
            Some("1" | "true") => true,
            Some(other) => {
                return Err(self.error(
                    node,
                    format!("<box> attribute `ignore` must be 0 or 1, found `{other}`"),
                ));
            }
        };
        let bbox = FaceBox {
            left: self.coordinate(node, "left")?,
            top: self.coordinate(node, "top")?,
            width: self.coordinate(node, "width")?,
            height: self.coordinate(node, "height")?,
        };
        if ignored {
            return Ok(None);
        }
        let valid = match size {
            Some((width, height)) => bbox.validate(width, height),
            None => bbox.validate_shape(),
        };
        valid.map_err(|e| self.error(node, e.to_string()))?;
        let mut names = HashSet::new();
        let mut parts: Vec<(&str, Point)> = Vec::new();
        for part in node.children().filter(|n| n.has_tag_name("part")) {
            let name = part
                .attribute("name")
                .ok_or_else(|| self.error(part, "<part> lacks the `name` attribute".into()))?;
            if !names.insert(name) {
                return Err(self.error(part, format!("duplicate part name `{name}` in this box")));
            }
            let x = self.coordinate(part, "x")?;
            let y = self.coordinate(part, "y")?;
            parts.push((name, [x + XML_TO_OURS, y + XML_TO_OURS]));
        }
        // dlib keeps parts in a map keyed by name, so the landmark index is the name's order;
        // numeric names ("00".."67", or unpadded) sort by value. Other names keep document order.
        let numbers: Option<Vec<u64>> = parts.iter().map(|(n, _)| n.parse().ok()).collect();
        let points = match numbers {
            Some(numbers) => {
                let mut numbered: Vec<(u64, Point)> = numbers
                    .into_iter()
                    .zip(parts.iter().map(|&(_, p)| p))
                    .collect();
                numbered.sort_by_key(|&(n, _)| n);
                numbered.into_iter().map(|(_, p)| p).collect()
            }
            None => parts.into_iter().map(|(_, p)| p).collect(),
        };
        Ok(Some(AnnotatedFace {
            bbox,
            points,
            source: PointSource::Labels,
        }))
    }
}

/// Writes images in dlib's exact layout (single quotes, 2/4/6-space indentation, no newline after
/// `</dataset>`), so dlib's own tools read the result. `file` attributes are written relative to
/// `base_dir` (the folder the XML will live in) when the image lies under it, lexically; otherwise
/// the path is written as given. Parts are named with zero-padded numbers (`00`.., wider beyond
/// 100 points) so dlib's name order is the point order; each part is the integer pixel holding the
/// point (its centre rounded half up), and box values are rounded half up. The text is ASCII
/// unless a path or `name` is not; dlib passes such bytes through despite its latin-1 declaration,
/// and [`read_dlib_xml`] reads UTF-8 back.
pub fn format_dlib_xml(images: &[LabeledImage], base_dir: &Path, name: &str) -> String {
    let mut out = String::from(
        "<?xml version='1.0' encoding='ISO-8859-1'?>\n\
         <?xml-stylesheet type='text/xsl' href='image_metadata_stylesheet.xsl'?>\n\
         <dataset>\n",
    );
    out.push_str(&format!(
        "<name>{}</name>\n<comment></comment>\n<images>\n",
        escape(name)
    ));
    for image in images {
        let file = relative_to(&image.image_path, base_dir);
        out.push_str(&format!("  <image file='{}'", escape(&file)));
        if let Some((w, h)) = image.size
            && w != 0
            && h != 0
        {
            out.push_str(&format!(" width='{w}' height='{h}'"));
        }
        out.push_str(">\n");
        for face in &image.faces {
            let b = &face.bbox;
            out.push_str(&format!(
                "    <box top='{}' left='{}' width='{}' height='{}'",
                round_half_up(b.top),
                round_half_up(b.left),
                round_half_up(b.width),
                round_half_up(b.height)
            ));
            if face.points.is_empty() {
                out.push_str("/>\n");
                continue;
            }
            out.push_str(">\n");
            let digits = (face.points.len() - 1).to_string().len().max(2);
            for (i, [x, y]) in face.points.iter().enumerate() {
                out.push_str(&format!(
                    "      <part name='{i:0digits$}' x='{}' y='{}'/>\n",
                    round_half_up(x - XML_TO_OURS),
                    round_half_up(y - XML_TO_OURS)
                ));
            }
            out.push_str("    </box>\n");
        }
        out.push_str("  </image>\n");
    }
    out.push_str("</images>\n</dataset>");
    out
}

/// Nearest integer, halves up (as the 300-W XMLs were made); saturates far outside `i64`.
fn round_half_up(v: f32) -> i64 {
    (f64::from(v) + 0.5).floor() as i64
}

/// `path` relative to `base` when it lies under it (lexically, after dropping `.` components),
/// with `/` separators as dlib's files use; otherwise `path` as given.
fn relative_to(path: &Path, base: &Path) -> String {
    let normal = |p: &Path| -> PathBuf {
        p.components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect()
    };
    match normal(path).strip_prefix(normal(base)) {
        Ok(rest) if !rest.as_os_str().is_empty() => rest
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/"),
        _ => path.to_string_lossy().into_owned(),
    }
}

/// Escapes text for an XML attribute value or element content.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ibug() -> std::path::PathBuf {
        crate::test_data::data_root().join("ibug_300w")
    }

    const SMALL: &str = "<?xml version='1.0' encoding='ISO-8859-1'?>
<?xml-stylesheet type='text/xsl' href='image_metadata_stylesheet.xsl'?>
<dataset>
<name>small</name>
<comment>two images</comment>
<images>
  <image file='a/one.jpg' width='500' height='375'>
    <box top='90' left='194' width='37' height='37'>
      <part name='02' x='3' y='4'/>
      <part name='00' x='0' y='0'/>
      <part name='01' x='10' y='20'/>
    </box>
    <box top='5' left='6' width='7' height='8' ignore='1'>
      <part name='00' x='1' y='1'/>
    </box>
    <box top='-3' left='-4' width='40' height='41'/>
  </image>
  <image file='/abs/two.png'>
    <box top='1' left='2' width='3' height='4'/>
    <box top='1' left='2' width='3' height='4' ignore='0'>
      <part name='b' x='5' y='6'/>
      <part name='a' x='7' y='8'/>
    </box>
  </image>
</images>
</dataset>";

    fn parse(text: &str) -> Result<Vec<LabeledImage>, DataError> {
        parse_dlib_xml(text, Path::new("/data/set/labels.xml"))
    }

    fn error_line(text: &str) -> (usize, String) {
        match parse(text) {
            Err(DataError::MalformedLine { line, reason, .. }) => (line, reason),
            other => panic!("expected a malformed-line error, got {other:?}"),
        }
    }

    fn bbox(left: f32, top: f32, width: f32, height: f32) -> FaceBox {
        FaceBox::new(left, top, width, height)
    }

    #[test]
    fn parses_images_boxes_and_parts() {
        let images = parse(SMALL).unwrap();
        assert_eq!(images.len(), 2);

        let one = &images[0];
        assert_eq!(one.image_path, PathBuf::from("/data/set/a/one.jpg"));
        assert_eq!(one.size, Some((500, 375)));
        assert_eq!(one.faces.len(), 2, "the ignored box is dropped");
        assert_eq!(one.faces[0].bbox, bbox(194.0, 90.0, 37.0, 37.0));
        // Ordered by name, and +0.5 into the library's convention.
        assert_eq!(
            one.faces[0].points,
            vec![[0.5, 0.5], [10.5, 20.5], [3.5, 4.5]]
        );
        assert_eq!(one.faces[1].bbox, bbox(-4.0, -3.0, 40.0, 41.0));
        assert!(one.faces[1].points.is_empty());

        let two = &images[1];
        assert_eq!(two.image_path, PathBuf::from("/abs/two.png"));
        assert_eq!(two.size, None);
        assert_eq!(two.faces.len(), 2);
        // Non-numeric names keep document order.
        assert_eq!(two.faces[1].points, vec![[5.5, 6.5], [7.5, 8.5]]);
    }

    #[test]
    fn numeric_names_sort_by_value_not_text() {
        let text = "<dataset><images><image file='x.jpg'><box top='0' left='0' width='1' \
                    height='1'><part name='10' x='10' y='0'/><part name='9' x='9' y='0'/>\
                    <part name='100' x='100' y='0'/></box></image></images></dataset>";
        let images = parse_dlib_xml(text, Path::new("labels.xml")).unwrap();
        assert_eq!(images[0].image_path, PathBuf::from("x.jpg"));
        let xs: Vec<f32> = images[0].faces[0].points.iter().map(|p| p[0]).collect();
        assert_eq!(xs, vec![9.5, 10.5, 100.5]);
    }

    #[test]
    fn bad_attributes_name_their_line() {
        let bad_x = SMALL.replace("x='10'", "x='ten'");
        let (line, reason) = error_line(&bad_x);
        assert_eq!(line, 11);
        assert!(reason.contains("`x`") && reason.contains("ten"), "{reason}");

        let no_top = SMALL.replace("<box top='90' ", "<box ");
        let (line, reason) = error_line(&no_top);
        assert_eq!(line, 8);
        assert!(reason.contains("`top`"), "{reason}");

        let bad_width = SMALL.replace("width='500'", "width='-5'");
        let (line, reason) = error_line(&bad_width);
        assert_eq!(line, 7);
        assert!(reason.contains("`width`"), "{reason}");

        let duplicate = SMALL.replace("name='01'", "name='00'");
        let (line, reason) = error_line(&duplicate);
        assert_eq!(line, 11);
        assert!(reason.contains("duplicate"), "{reason}");

        let no_file = SMALL.replace("file='/abs/two.png'", "");
        let (line, reason) = error_line(&no_file);
        assert_eq!(line, 18);
        assert!(reason.contains("`file`"), "{reason}");

        let bad_ignore = SMALL.replace("ignore='1'", "ignore='maybe'");
        assert_eq!(error_line(&bad_ignore).0, 13);
    }

    #[test]
    fn invalid_xml_names_its_line() {
        let broken = SMALL.replace("</box>\n    <box top='5'", "</bx>\n    <box top='5'");
        let (line, reason) = error_line(&broken);
        assert_eq!(line, 12);
        assert!(reason.contains("invalid XML"), "{reason}");

        let (line, reason) = error_line("<?xml version='1.0'?>\n<other/>");
        assert_eq!(line, 2);
        assert!(reason.contains("dataset"), "{reason}");
    }

    #[test]
    fn format_then_parse_round_trips() {
        let base = Path::new("/data/set");
        let face = |n: usize, dx: f32| AnnotatedFace {
            bbox: bbox(10.0 + dx, -2.0, 30.0, 31.0),
            points: (0..n)
                .map(|i| [i as f32 + 0.5 + dx, 2.0 * i as f32 - 1.5])
                .collect(),
            source: PointSource::Labels,
        };
        let images = vec![
            LabeledImage {
                image_path: base.join("sub/a&b's.jpg"),
                size: Some((64, 48)),
                faces: vec![face(68, 0.0), face(0, 3.0)],
            },
            LabeledImage {
                image_path: PathBuf::from("/elsewhere/c.jpg"),
                size: None,
                faces: vec![face(101, 1.0)],
            },
            LabeledImage {
                image_path: base.join("d.jpg"),
                size: None,
                faces: vec![],
            },
        ];
        let text = format_dlib_xml(&images, base, "round <trip>");
        assert!(text.contains("<name>round &lt;trip&gt;</name>"), "{text}");
        assert!(text.contains("file='sub/a&amp;b&apos;s.jpg' width='64' height='48'>"));
        assert!(
            text.contains("      <part name='00' x='0' y='-2'/>\n"),
            "{text}"
        );
        assert!(text.contains("      <part name='100' x='101'"), "{text}");
        assert!(text.contains("    <box top='-2' left='13' width='30' height='31'/>\n"));
        assert!(text.contains("  <image file='d.jpg'>\n  </image>\n"));
        assert!(text.ends_with("</images>\n</dataset>"));
        let back = parse_dlib_xml(&text, &base.join("labels.xml")).unwrap();
        assert_eq!(back, images);
    }

    #[test]
    fn boxes_that_do_not_fit_their_image_name_file_and_line() {
        // SMALL's first image is 500x375; its first box is on line 8.
        let cases = [
            (
                "width='37' height='37'",
                "width='0' height='37'",
                "(194,90,0,37)",
            ),
            (
                "width='37' height='37'",
                "width='-37' height='37'",
                "positive",
            ),
            (
                "top='90' left='194'",
                "top='90' left='900'",
                "outside the 500x375 image",
            ),
            ("top='90' left='194'", "top='-90' left='-194'", "outside"),
            (
                "width='37' height='37'",
                "width='37' height='6000'",
                "10 times",
            ),
        ];
        for (from, to, expected) in cases {
            let text = SMALL.replacen(from, to, 1);
            assert_ne!(text, SMALL);
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with("/data/set/labels.xml:8: face box"), "{err}");
            assert!(err.contains(expected), "{to}: {err}");
        }
        // Without a stated size a box is still checked on its own.
        let text = SMALL.replace(
            "<box top='1' left='2' width='3' height='4'/>",
            "<box top='1' left='2' width='0' height='4'/>",
        );
        let (line, reason) = error_line(&text);
        assert_eq!(line, 19);
        assert!(reason.contains("empty"), "{reason}");
        // An ignored box is dropped unchecked: dlib marks partial faces that way.
        let ignored = SMALL.replace(
            "<box top='5' left='6' width='7' height='8' ignore='1'>",
            "<box top='5' left='6' width='0' height='8' ignore='1'>",
        );
        assert!(parse(&ignored).is_ok());
    }

    #[test]
    fn points_outside_the_image_are_kept() {
        let text = "<dataset><images><image file='x.jpg' width='100' height='80'>\
                    <box top='40' left='10' width='80' height='60'><part name='0' x='-5' y='95'/>\
                    <part name='1' x='150' y='-3'/></box></image></images></dataset>";
        let images = parse(text).unwrap();
        assert_eq!(images[0].faces[0].points, vec![[-4.5, 95.5], [150.5, -2.5]]);
    }

    #[test]
    fn duplicate_images_and_boxes_are_kept_as_given() {
        let image = "<image file='x.jpg' width='100' height='80'>\
                     <box top='10' left='10' width='30' height='30'/>\
                     <box top='10' left='10' width='30' height='30'/></image>";
        let text = format!("<dataset><images>{image}{image}</images></dataset>");
        let images = parse(&text).unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0], images[1]);
        assert_eq!(images[0].faces.len(), 2);
        assert_eq!(images[0].faces[0], images[0].faces[1]);
    }

    #[test]
    fn thousands_of_faces_in_one_image_are_read() {
        let boxes: String = (0..5000)
            .map(|i| {
                format!(
                    "<box top='{}' left='{}' width='20' height='20'><part name='0' x='1' y='2'/></box>\n",
                    (i / 100) * 20,
                    (i % 100) * 20
                )
            })
            .collect();
        let text = format!(
            "<dataset><images><image file='crowd.jpg' width='2000' height='1000'>\n{boxes}</image></images></dataset>"
        );
        let started = std::time::Instant::now();
        let images = parse(&text).unwrap();
        assert_eq!(images[0].faces.len(), 5000);
        assert_eq!(images[0].faces[4999].bbox, bbox(1980.0, 980.0, 20.0, 20.0));
        assert!(
            started.elapsed().as_secs_f64() < 5.0,
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn every_real_label_file_passes_box_validation() {
        for path in [
            "ibug_300w/labels_300w_train.xml",
            "ibug_300w/labels_300w_test.xml",
            "ibug_300w/labels_300w_train_hogbox.xml",
            "ibug_300w/labels_300w_test_hogbox.xml",
            "dlib_example_faces/training.xml",
            "dlib_example_faces/testing_with_face_landmarks.xml",
        ] {
            let path = crate::test_data::data_root().join(path);
            if !path.is_file() {
                eprintln!("skipped: {} is absent", path.display());
                continue;
            }
            let images = read_dlib_xml(&path).unwrap();
            assert!(
                images.iter().all(|i| i.size.is_some()),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn relative_paths_are_lexical() {
        assert_eq!(
            relative_to(Path::new("./d/x/a.jpg"), Path::new("d")),
            "x/a.jpg"
        );
        assert_eq!(
            relative_to(Path::new("/o/a.jpg"), Path::new("/d")),
            "/o/a.jpg"
        );
        assert_eq!(relative_to(Path::new("a.jpg"), Path::new("")), "a.jpg");
    }

    #[test]
    fn real_300w_test_labels_match_their_pts_files() {
        let path = ibug().join("labels_300w_test.xml");
        if !path.is_file() {
            eprintln!("skipped: {} is absent", path.display());
            return;
        }
        let images = read_dlib_xml(&path).unwrap();
        assert_eq!(images.len(), 224);
        for image in &images {
            assert!(image.size.is_some());
            assert_eq!(image.faces.len(), 1);
            assert_eq!(image.faces[0].points.len(), 68);
        }
        // The XML rounds the .pts coordinates to whole pixels: once both are in the library's
        // convention they agree within half a pixel, which pins the two conventions together.
        for image in &images {
            let pts = crate::data::pts::read_pts(&image.image_path.with_extension("pts")).unwrap();
            for (a, b) in image.faces[0].points.iter().zip(&pts) {
                assert!(
                    (a[0] - b[0]).abs() <= 0.5 + 1e-4 && (a[1] - b[1]).abs() <= 0.5 + 1e-4,
                    "{}: xml {a:?} vs pts {b:?}",
                    image.image_path.display()
                );
            }
        }
        // Formatting reproduces dlib's layout; only the comment differs.
        let original = std::fs::read_to_string(&path).unwrap();
        let formatted = format_dlib_xml(&images, &ibug(), "iBUG 300-W face crops - testing images");
        let body = |s: &str| s.split("<images>").nth(1).map(str::to_owned);
        assert_eq!(body(&formatted), body(&original));
    }

    #[test]
    fn real_dlib_example_files_parse() {
        let dir = &crate::test_data::data_root().join("dlib_example_faces");
        if !dir.is_dir() {
            eprintln!("skipped: {} is absent", dir.display());
            return;
        }
        let with_parts = read_dlib_xml(&dir.join("training_with_face_landmarks.xml")).unwrap();
        assert_eq!(with_parts.len(), 4);
        let faces: Vec<&AnnotatedFace> = with_parts.iter().flat_map(|i| &i.faces).collect();
        assert_eq!(faces.len(), 18);
        assert!(faces.iter().all(|f| f.points.len() == 68));
        assert!(with_parts.iter().all(|i| i.image_path.is_file()));

        let boxes_only = read_dlib_xml(&dir.join("training.xml")).unwrap();
        let faces: Vec<&AnnotatedFace> = boxes_only.iter().flat_map(|i| &i.faces).collect();
        assert_eq!(faces.len(), 18);
        assert!(faces.iter().all(|f| f.points.is_empty()));
    }
}
