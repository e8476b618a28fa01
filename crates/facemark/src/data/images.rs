//! Image decoding and the model-ready form of a face: a small grayscale image in `[-0.5, 0.5]`
//! with its landmarks as fractions of width and height.

use std::io::Cursor;
use std::path::Path;

use image::imageops::{self, FilterType};
use image::{GrayImage, ImageFormat, ImageReader, Limits};

use super::{DataError, Point};

/// Largest image side decoded, in pixels. Generous for real photos (a 100-megapixel camera's
/// frame is about 12000 x 8000), and small enough that a header claiming 50000 x 50000 is refused
/// before any pixel memory is allocated.
pub const MAX_IMAGE_SIDE: u32 = 20_000;

/// Most memory the decoder may allocate for one image (1 GiB), and the largest image file read.
/// A 20000 x 20000 grey image needs 400 MB; an 18000 x 18000 RGB one, 970 MB.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// How strictly [`load_gray_with`] decodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Decode a JPEG whose data stops before its end-of-image marker instead of refusing it. The
    /// decoder fills the missing rows with grey, so landmarks found there are guesses; the result
    /// carries a warning saying so. Off by default: a cut file is usually an interrupted copy or
    /// download, and silently predicting on half a photo is worse than an error.
    pub allow_truncated: bool,
}

/// A decoded image and what the caller should be told about it.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    pub gray: GrayImage,
    /// Set when the image was accepted despite a defect ([`DecodeOptions::allow_truncated`]);
    /// names the file.
    pub warning: Option<String>,
}

/// Decodes an image file to 8-bit grayscale, refusing truncated JPEGs and images larger than
/// [`MAX_IMAGE_SIDE`] (see [`load_gray_with`] to accept truncated files).
pub fn load_gray(path: &Path) -> Result<GrayImage, DataError> {
    load_gray_with(path, DecodeOptions::default()).map(|decoded| decoded.gray)
}

/// Decodes an image file to 8-bit grayscale with the given options.
pub fn load_gray_with(path: &Path, options: DecodeOptions) -> Result<DecodedImage, DataError> {
    decode_gray(&read_image_file(path)?, path, options)
}

/// Reads an image file's bytes, refusing one larger than [`MAX_DECODE_BYTES`].
fn read_image_file(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_DECODE_BYTES {
        return Err(DataError::ImageFileTooLarge {
            path: path.to_owned(),
            bytes: size,
            max: MAX_DECODE_BYTES,
        });
    }
    std::fs::read(path).map_err(io)
}

/// Decodes the bytes of an image file (JPEG or PNG, told by their content) to 8-bit grayscale;
/// `path` names the file in errors and warnings.
pub fn decode_gray(
    bytes: &[u8],
    path: &Path,
    options: DecodeOptions,
) -> Result<DecodedImage, DataError> {
    let (image, warning) = decode_photo(bytes, path, options)?;
    Ok(DecodedImage {
        gray: image.into_luma8(),
        warning,
    })
}

/// [`decode_gray`]'s checks and decoding, keeping the colour; with a warning when a defect was
/// accepted.
fn decode_photo(
    bytes: &[u8],
    path: &Path,
    options: DecodeOptions,
) -> Result<(image::DynamicImage, Option<String>), DataError> {
    let image_error = |source| DataError::Image {
        path: path.to_owned(),
        source,
    };
    let reader = |limits: Limits| -> Result<ImageReader<Cursor<&[u8]>>, DataError> {
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|source| DataError::Io {
                path: path.to_owned(),
                source,
            })?;
        reader.limits(limits);
        Ok(reader)
    };
    let probe = reader(Limits::no_limits())?;
    let format = probe.format();
    // The header alone gives the size (reading it allocates no pixels, so it needs no limits):
    // refuse a huge one by name, with its size, before the decoder allocates anything.
    let (width, height) = probe.into_dimensions().map_err(image_error)?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(DataError::ImageTooLarge {
            path: path.to_owned(),
            width,
            height,
            max: MAX_IMAGE_SIDE,
        });
    }
    // The JPEG decoder (zune-jpeg, run non-strict by `image`) fills a cut stream with grey
    // without a word; PNG's decoder already fails on missing data.
    let mut warning = None;
    if format == Some(ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        if !options.allow_truncated {
            return Err(DataError::TruncatedImage {
                path: path.to_owned(),
            });
        }
        warning = Some(format!(
            "{}: truncated JPEG (no end-of-image marker) decoded anyway; its missing part is \
             grey, so landmarks there are guesses",
            path.display()
        ));
    }
    // Decoded as a person sees it: the EXIF orientation a phone wrote is applied.
    use image::ImageDecoder;
    let mut decoder = reader(decode_limits())?
        .into_decoder()
        .map_err(image_error)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = image::DynamicImage::from_decoder(decoder).map_err(image_error)?;
    image.apply_orientation(orientation);
    Ok((image, warning))
}

/// The decoder's limits: [`MAX_IMAGE_SIDE`] per side and [`MAX_DECODE_BYTES`] in all.
fn decode_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

/// Whether a JPEG stream runs to its end-of-image marker (`FF D9`); bytes after it are ignored,
/// as decoders ignore them. Walks the marker segments by their stated lengths, so the markers of
/// an embedded EXIF thumbnail (a whole JPEG with its own `FF D9`) are skipped, and scans the
/// entropy-coded data after each start-of-scan, where `FF 00` is a stuffed byte and `FF D0` to
/// `FF D7` are restart markers. Stray bytes between segments are skipped as libjpeg skips them.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        // The next marker: skip stray bytes, then fill bytes (any number of `FF`).
        let Some(offset) = bytes[i.min(bytes.len())..].iter().position(|&b| b == 0xFF) else {
            return false;
        };
        i += offset;
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            // Markers without a length: restarts, TEM, a repeated SOI; `FF 00` outside a scan is
            // a stray byte pair.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let Some(length) = bytes.get(i..i + 2) else {
            return false;
        };
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        if length < 2 {
            return false;
        }
        i += length;
        if i > bytes.len() {
            return false;
        }
        if marker == 0xDA {
            // Entropy-coded data runs to the first marker that is not a stuffed byte or restart.
            loop {
                let Some(offset) = bytes[i..].iter().position(|&b| b == 0xFF) else {
                    return false;
                };
                i += offset;
                match bytes.get(i + 1) {
                    None => return false,
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(0xFF) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

/// A model-ready face: grayscale pixels in `[-0.5, 0.5]`, row-major, and landmarks as fractions of
/// the image's width and height (so they survive any resize unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<f32>,
    pub points: Vec<Point>,
}

impl Example {
    /// Resizes `gray` to `width` x `height` (an area-weighted filter, so small sizes do not alias)
    /// and maps `points_px`, given in pixels of `gray`, to fractions.
    pub fn from_gray(gray: &GrayImage, points_px: &[Point], width: usize, height: usize) -> Self {
        let resized = if gray.dimensions() == (width as u32, height as u32) {
            gray.clone()
        } else {
            imageops::resize(gray, width as u32, height as u32, FilterType::Triangle)
        };
        let (gw, gh) = (gray.width() as f32, gray.height() as f32);
        Self {
            width,
            height,
            pixels: resized
                .as_raw()
                .iter()
                .map(|&v| normalize_pixel(v))
                .collect(),
            points: points_px.iter().map(|p| [p[0] / gw, p[1] / gh]).collect(),
        }
    }

    /// Landmarks in pixels of an image of the given size.
    pub fn points_in(&self, width: f32, height: f32) -> Vec<Point> {
        scale_points(&self.points, width, height)
    }

    /// The image as 8-bit grayscale, for drawing.
    pub fn to_gray(&self) -> GrayImage {
        let raw = self
            .pixels
            .iter()
            .map(|&v| ((v + 0.5) * 255.0).round().clamp(0.0, 255.0) as u8)
            .collect();
        GrayImage::from_raw(self.width as u32, self.height as u32, raw)
            .expect("pixel count matches size")
    }
}

/// Maps an 8-bit intensity to the network's input range `[-0.5, 0.5]`.
pub fn normalize_pixel(v: u8) -> f32 {
    v as f32 / 255.0 - 0.5
}

/// Scales fractional points to pixels of a `width` x `height` image.
pub fn scale_points(points: &[Point], width: f32, height: f32) -> Vec<Point> {
    points
        .iter()
        .map(|p| [p[0] * width, p[1] * height])
        .collect()
}

/// Decodes a photo as a person sees it (the EXIF orientation a phone wrote is applied), colour
/// or grey, with the checks of [`load_gray`].
pub fn load_photo(path: &Path) -> Result<image::DynamicImage, DataError> {
    let bytes = read_image_file(path)?;
    decode_photo(&bytes, path, DecodeOptions::default()).map(|(image, _)| image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_pixels_map_to_known_values() {
        assert_eq!(normalize_pixel(0), -0.5);
        assert_eq!(normalize_pixel(255), 0.5);
        assert!((normalize_pixel(51) - (-0.3)).abs() < 1e-6);
    }

    #[test]
    fn resize_keeps_a_flat_image_flat_and_maps_points_to_fractions() {
        let gray = GrayImage::from_pixel(640, 480, image::Luma([255]));
        let ex = Example::from_gray(&gray, &[[320.0, 120.0]], 80, 60);
        assert_eq!((ex.width, ex.height, ex.pixels.len()), (80, 60, 4800));
        assert!(ex.pixels.iter().all(|&v| (v - 0.5).abs() < 1e-6));
        assert_eq!(ex.points, vec![[0.5, 0.25]]);
        assert_eq!(ex.points_in(640.0, 480.0), vec![[320.0, 120.0]]);
    }

    /// A JPEG or PNG of `width` x `height` noise (noise, so the compressed file is large).
    fn encoded(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
        let gray = GrayImage::from_fn(width, height, |x, y| {
            image::Luma([((x * 7919 + y * 104_729) % 251) as u8])
        });
        let mut bytes = Cursor::new(Vec::new());
        gray.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn truncated_real_jpeg_is_refused_by_name_unless_allowed() {
        let real = crate::test_data::data_root().join("imm_face_db/01-1m.jpg");
        if !real.is_file() {
            eprintln!("skipped: {} is absent", real.display());
            return;
        }
        let bytes = std::fs::read(&real).unwrap();
        assert!(load_gray(&real).is_ok(), "the whole file decodes");
        let dir = tempfile::tempdir().unwrap();
        let cut = write(dir.path(), "cut.jpg", &bytes[..2000]);

        let err = load_gray(&cut).unwrap_err();
        assert!(matches!(err, DataError::TruncatedImage { .. }), "{err}");
        assert!(err.to_string().contains("cut.jpg"), "{err}");

        let allowed = DecodeOptions {
            allow_truncated: true,
        };
        let decoded = load_gray_with(&cut, allowed).unwrap();
        assert_eq!(decoded.gray.dimensions(), (640, 480));
        let warning = decoded.warning.unwrap();
        assert!(warning.contains("cut.jpg") && warning.contains("truncated"));
        assert!(load_gray_with(&real, allowed).unwrap().warning.is_none());
    }

    #[test]
    fn jpeg_completeness_ignores_trailing_bytes_and_thumbnails() {
        let jpeg = encoded(ImageFormat::Jpeg, 64, 48);
        assert!(jpeg_is_complete(&jpeg));
        // Bytes after the end-of-image marker (padding, appended data) are ignored.
        let mut padded = jpeg.clone();
        padded.extend_from_slice(&[0, 0, 0, 0x12, 0x34]);
        assert!(jpeg_is_complete(&padded));
        // Every cut before the end-of-image marker is caught.
        for cut in 0..jpeg.len() - 1 {
            assert!(!jpeg_is_complete(&jpeg[..cut]), "cut at {cut}");
        }
        // A thumbnail's own end marker inside an APP1 segment does not make a cut file whole.
        let mut with_thumbnail = jpeg[..2].to_vec();
        let thumbnail = encoded(ImageFormat::Jpeg, 8, 8);
        let length = u16::try_from(thumbnail.len() + 2).unwrap();
        with_thumbnail.extend_from_slice(&[0xFF, 0xE1]);
        with_thumbnail.extend_from_slice(&length.to_be_bytes());
        with_thumbnail.extend_from_slice(&thumbnail);
        with_thumbnail.extend_from_slice(&jpeg[2..]);
        assert!(jpeg_is_complete(&with_thumbnail));
        let cut = &with_thumbnail[..with_thumbnail.len() - 100];
        assert!(!jpeg_is_complete(cut));
        let dir = tempfile::tempdir().unwrap();
        assert!(load_gray(&write(dir.path(), "thumb.jpg", &with_thumbnail)).is_ok());
        let err = load_gray(&write(dir.path(), "thumb-cut.jpg", cut)).unwrap_err();
        assert!(matches!(err, DataError::TruncatedImage { .. }), "{err}");
    }

    #[test]
    fn every_real_jpeg_is_complete() {
        let root = &crate::test_data::data_root();
        if !root.is_dir() {
            eprintln!("skipped: {} is absent", root.display());
            return;
        }
        let mut folders = vec![root.to_path_buf()];
        let mut checked = 0;
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                } else if path.extension().is_some_and(|e| {
                    e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg")
                }) {
                    let bytes = std::fs::read(&path).unwrap();
                    assert!(
                        jpeg_is_complete(&bytes),
                        "{} judged truncated",
                        path.display()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 240, "only {checked} JPEGs found");
    }

    #[test]
    fn truncated_png_is_refused_by_name() {
        let png = encoded(ImageFormat::Png, 200, 150);
        let dir = tempfile::tempdir().unwrap();
        assert!(load_gray(&write(dir.path(), "whole.png", &png)).is_ok());
        for cut in [2000, png.len() / 2, png.len() - 20] {
            let path = write(dir.path(), "cut.png", &png[..cut]);
            let err = load_gray(&path).unwrap_err();
            assert!(err.to_string().contains("cut.png"), "cut at {cut}: {err}");
            // The option is about JPEG's silent grey fill; a PNG that cannot decode still fails.
            let allowed = DecodeOptions {
                allow_truncated: true,
            };
            assert!(load_gray_with(&path, allowed).is_err(), "cut at {cut}");
        }
    }

    /// CRC-32 (IEEE), for PNG chunks made by hand.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A small real PNG whose header claims `width` x `height`.
    fn png_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut png = encoded(ImageFormat::Png, 4, 4);
        // Signature (8), IHDR length (4), then "IHDR" and its 13 data bytes, then the CRC.
        assert_eq!(&png[12..16], b"IHDR");
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    /// A small real JPEG whose frame header claims `width` x `height`.
    fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
        let mut jpeg = encoded(ImageFormat::Jpeg, 4, 4);
        let sof = jpeg
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("a baseline frame header");
        // FF C0, length (2), precision (1), then height and width.
        jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        jpeg
    }

    #[test]
    fn huge_claimed_sizes_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("huge.png", png_claiming(50_000, 50_000)),
            ("wide.png", png_claiming(50_000, 10)),
            ("huge.jpg", jpeg_claiming(50_000, 50_000)),
            ("tall.jpg", jpeg_claiming(10, 30_000)),
        ];
        for (name, bytes) in cases {
            let err = load_gray(&write(dir.path(), name, &bytes)).unwrap_err();
            assert!(
                matches!(err, DataError::ImageTooLarge { .. }),
                "{name}: {err}"
            );
            let text = err.to_string();
            assert!(text.contains(name) && text.contains("20000"), "{text}");
        }
        // Within the side limit but over the memory limit (19000^2 RGB-sized PNG data is more
        // than 1 GiB): refused by the decoder's own limit, still by name and without allocating.
        let mut rgb = png_claiming(19_000, 19_000);
        rgb[25] = 2; // colour type: RGB
        let crc = crc32(&rgb[12..29]);
        rgb[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = load_gray(&write(dir.path(), "big-rgb.png", &rgb)).unwrap_err();
        assert!(err.to_string().contains("big-rgb.png"), "{err}");
        // A real-photo size stays fine: the header is read, the (missing) data then fails.
        let err = load_gray(&write(dir.path(), "ok.png", &png_claiming(6000, 4000))).unwrap_err();
        assert!(matches!(err, DataError::Image { .. }), "{err}");
    }

    #[test]
    fn unreadable_image_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-an-image.jpg");
        std::fs::write(&path, b"this is text").unwrap();
        let err = load_gray(&path).unwrap_err();
        assert!(err.to_string().contains("not-an-image.jpg"), "{err}");
    }
}
