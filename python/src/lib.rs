//! facemark's Python binding: the `facemark._facemark` extension module, which
//! `facemark/__init__.py` re-exports.
//!
//! It is a thin layer over the library: images from numpy, PIL or a file become the grey image
//! `facemark predict` works on, the library's [`FacePipeline`] finds the faces and points with the
//! GIL released, and the library's errors become `ValueError`, `FileNotFoundError` or `OSError`
//! with the library's own messages. Nothing here panics on user input, and a panic from the
//! library is caught before it reaches Python (as a `RuntimeError`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use facemark::data::images::{MAX_IMAGE_SIDE, load_photo};
use facemark::data::{DataError, FaceBox, LabeledImage, Point};
use facemark::detect::DetectorConfig;
use facemark::inference::{FacePipeline, Prediction};
use facemark::run::RunError;
use image::{DynamicImage, GrayImage, RgbImage};
use numpy::ndarray::Array2;
use numpy::{
    PyArray2, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{
    PyFileNotFoundError, PyOSError, PyPermissionError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyString;

/// A face box `(left, top, width, height)` in pixels, as Python sees it.
type BoxTuple = (f32, f32, f32, f32);

/// A face box as Python gives it: any sequence of four numbers (a tuple, a list, a numpy row).
type BoxValues = [f32; 4];

/// The Python exception for a library error: a missing file is `FileNotFoundError`, other I/O
/// failures `PermissionError` or `OSError`, and everything a file's or argument's content causes
/// `ValueError`; the message is the library's (it names the file, and the line for text formats).
fn python_error(error: &(dyn std::error::Error + 'static)) -> PyErr {
    let message = error.to_string();
    let io = error
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>());
    match io.map(std::io::Error::kind) {
        Some(std::io::ErrorKind::NotFound) => PyFileNotFoundError::new_err(message),
        Some(std::io::ErrorKind::PermissionDenied) => PyPermissionError::new_err(message),
        Some(_) => PyOSError::new_err(message),
        None => PyValueError::new_err(message),
    }
}

fn data_error(error: DataError) -> PyErr {
    python_error(&error)
}

fn run_error(error: RunError) -> PyErr {
    match &error {
        // A name with a path separator meant a run directory, and that is a missing file; a bare
        // name meant a shipped model.
        RunError::UnknownModel { name, .. } if name.contains(['/', std::path::MAIN_SEPARATOR]) => {
            PyFileNotFoundError::new_err(error.to_string())
        }
        _ => python_error(&error),
    }
}

/// Runs `work` without the GIL, turning a panic (a facemark bug) into a `RuntimeError` instead of
/// letting it unwind into the interpreter.
fn without_gil<T: Send>(py: Python<'_>, work: impl FnOnce() -> PyResult<T> + Send) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(work)))
        .unwrap_or_else(|panic| {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Err(PyRuntimeError::new_err(format!(
                "facemark failed unexpectedly (a bug, please report it): {reason}"
            )))
        })
}

/// An image as received, to be made grey without the GIL.
enum ImageInput {
    /// A photo file, decoded as `facemark predict` decodes it (EXIF orientation, checks).
    File(PathBuf),
    /// Pixels copied out of a numpy array or PIL image.
    Pixels { pixels: Pixels, name: PathBuf },
}

enum Pixels {
    Gray(GrayImage),
    Rgb(RgbImage),
}

impl ImageInput {
    /// Reads what Python passed: a numpy uint8 array (HxW grey, HxWx3 RGB, HxWx4 RGBA whose alpha
    /// is dropped), a PIL image (converted to RGB unless it is grey, RGB or RGBA already) or a path.
    /// `name` names an in-memory image in error messages.
    fn from_python(image: &Bound<'_, PyAny>, name: &str) -> PyResult<Self> {
        if let Ok(array) = image.cast::<PyUntypedArray>() {
            return Ok(Self::Pixels {
                pixels: pixels_from_array(array, name)?,
                name: PathBuf::from(name),
            });
        }
        if image.hasattr("mode")? && image.hasattr("convert")? {
            let mode: String = image.getattr("mode")?.extract()?;
            let image = if matches!(mode.as_str(), "L" | "RGB" | "RGBA") {
                image.clone()
            } else {
                image.call_method1("convert", ("RGB",))?
            };
            let array = image
                .py()
                .import("numpy")?
                .call_method1("asarray", (image,))?;
            return Self::from_python(&array, name);
        }
        if image.is_instance_of::<PyString>() || image.hasattr("__fspath__")? {
            return Ok(Self::File(image.extract()?));
        }
        Err(PyTypeError::new_err(format!(
            "{name}: expected a numpy uint8 array (HxW, HxWx3 or HxWx4), a PIL image or a file \
             path, got {}",
            image.get_type().name()?
        )))
    }

    /// The grey image `facemark predict` would see, and the name predictions carry.
    fn into_gray(self) -> Result<(GrayImage, PathBuf), DataError> {
        match self {
            Self::File(path) => Ok((load_photo(&path)?.into_luma8(), path)),
            // The image crate's own RGB-to-grey, as the CLI's decoder output goes through it.
            Self::Pixels { pixels, name } => match pixels {
                Pixels::Gray(gray) => Ok((gray, name)),
                Pixels::Rgb(rgb) => Ok((DynamicImage::ImageRgb8(rgb).to_luma8(), name)),
            },
        }
    }
}

/// Copies a numpy image (any strides) into an image buffer, refusing what is not one.
fn pixels_from_array(array: &Bound<'_, PyUntypedArray>, name: &str) -> PyResult<Pixels> {
    let shape = array.shape().to_vec();
    let shape_text = python_shape(&shape);
    let dtype = array.dtype();
    if !dtype.is_equiv_to(&numpy::dtype::<u8>(array.py())) {
        return Err(PyValueError::new_err(format!(
            "{name}: the image must be a uint8 array, got dtype {} (scale floats to 0-255 and \
             convert with .astype(numpy.uint8))",
            dtype.str()?
        )));
    }
    let channels = match shape[..] {
        [_, _] => 1,
        [_, _, c @ (1 | 3 | 4)] => c,
        _ => {
            return Err(PyValueError::new_err(format!(
                "{name}: the image must be HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA), got shape \
                 {shape_text}"
            )));
        }
    };
    let (height, width) = (shape[0], shape[1]);
    if height == 0 || width == 0 {
        return Err(PyValueError::new_err(format!(
            "{name}: the image is empty (shape {shape_text})"
        )));
    }
    if height.max(width) > MAX_IMAGE_SIDE as usize {
        return Err(PyValueError::new_err(format!(
            "{name}: the image is {width}x{height} pixels, more than the {MAX_IMAGE_SIDE} per \
             side facemark works on"
        )));
    }
    let typed = array.cast::<PyArrayDyn<u8>>()?.try_readonly()?;
    let view = typed.as_array();
    let (w, h) = (width as u32, height as u32);
    Ok(match channels {
        1 => Pixels::Gray(
            GrayImage::from_raw(w, h, view.iter().copied().collect())
                .ok_or_else(|| PyValueError::new_err(format!("{name}: unreadable pixels")))?,
        ),
        _ => {
            // Row-major order; a fourth channel (alpha) is dropped.
            let rgb: Vec<u8> = view
                .iter()
                .enumerate()
                .filter(|(i, _)| i % channels < 3)
                .map(|(_, &v)| v)
                .collect();
            Pixels::Rgb(
                RgbImage::from_raw(w, h, rgb)
                    .ok_or_else(|| PyValueError::new_err(format!("{name}: unreadable pixels")))?,
            )
        }
    })
}

/// A shape as Python prints it: `(50,)`, `(480, 640, 3)`.
fn python_shape(shape: &[usize]) -> String {
    match shape {
        [single] => format!("({single},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn points_array<'py>(py: Python<'py>, points: &[Point]) -> Bound<'py, PyArray2<f32>> {
    let flat: Vec<f32> = points.iter().flatten().copied().collect();
    let array =
        Array2::from_shape_vec((points.len(), 2), flat).unwrap_or_else(|_| Array2::zeros((0, 2)));
    PyArray2::from_owned_array(py, array)
}

/// Points from anything numpy reads as an (N, 2) array of numbers.
fn points_from_python(points: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<Point>> {
    let numpy = points.py().import("numpy")?;
    let array = numpy
        .call_method1("asarray", (points, "float32"))
        .map_err(|e| PyValueError::new_err(format!("{what}: not an array of numbers ({e})")))?;
    let array = array.cast_into::<PyArrayDyn<f32>>()?;
    let shape = array.shape().to_vec();
    if !matches!(shape[..], [_, 2]) {
        return Err(PyValueError::new_err(format!(
            "{what}: expected an (N, 2) array of points, got shape {}",
            python_shape(&shape)
        )));
    }
    let view = array.try_readonly()?;
    let values: Vec<f32> = view.as_array().iter().copied().collect();
    Ok(values.chunks_exact(2).map(|p| [p[0], p[1]]).collect())
}

fn face_boxes(boxes: &[BoxValues]) -> Vec<FaceBox> {
    boxes
        .iter()
        .map(|&[left, top, width, height]| FaceBox::new(left, top, width, height))
        .collect()
}

/// One face: its box, the detector's score and its landmarks.
#[pyclass(frozen, module = "facemark")]
struct Face {
    /// `(left, top, width, height)` in pixels; `None` for a whole-image model (IMM).
    #[pyo3(get, name = "box")]
    face_box: Option<BoxTuple>,
    /// The detector's confidence (higher is surer); `None` when the box was given.
    #[pyo3(get)]
    score: Option<f32>,
    /// `(N, 2)` float32 `x, y` in pixels: pixel `i` covers `[i, i + 1)`, so its centre is `i + 0.5`.
    #[pyo3(get)]
    points: Py<PyArray2<f32>>,
}

impl Face {
    fn new(
        py: Python<'_>,
        face_box: Option<BoxTuple>,
        score: Option<f32>,
        points: &[Point],
    ) -> Self {
        Self {
            face_box,
            score,
            points: points_array(py, points).unbind(),
        }
    }

    fn from_prediction(py: Python<'_>, prediction: &Prediction) -> Self {
        let face_box = prediction.bbox.map(|[l, t, w, h]| (l, t, w, h));
        Self::new(py, face_box, prediction.score, &prediction.points)
    }
}

#[pymethods]
impl Face {
    fn __repr__(&self, py: Python<'_>) -> String {
        let face_box = self.face_box.map_or("None".into(), |(l, t, w, h)| {
            format!("({l}, {t}, {w}, {h})")
        });
        let score = self.score.map_or("None".into(), |s| format!("{s:.3}"));
        let points = self.points.bind(py).shape()[0];
        format!("Face(box={face_box}, score={score}, points=<{points} points>)")
    }
}

/// An image of a dlib XML label file with its annotated faces.
#[pyclass(frozen, module = "facemark")]
struct LabeledFaces {
    /// The image's path (resolved against the XML file's folder).
    #[pyo3(get)]
    path: PathBuf,
    /// `(width, height)` when the XML states it.
    #[pyo3(get)]
    size: Option<(u32, u32)>,
    /// The faces: box, `score=None`, points `(N, 2)` (`(0, 2)` for a box without parts).
    #[pyo3(get)]
    faces: Vec<Py<Face>>,
}

#[pymethods]
impl LabeledFaces {
    fn __repr__(&self) -> String {
        let size = self
            .size
            .map_or("None".into(), |(w, h)| format!("({w}, {h})"));
        format!(
            "LabeledFaces(path={:?}, size={size}, faces=<{} faces>)",
            self.path.display().to_string(),
            self.faces.len()
        )
    }
}

/// The shipped models inside the installed package: `facemark/models/`, copied into the wheel
/// from the repository's `models/` when it was built.
fn package_models_dir(py: Python<'_>) -> PyResult<PathBuf> {
    let init: PathBuf = py.import("facemark")?.getattr("__file__")?.extract()?;
    Ok(init.with_file_name("models"))
}

/// Finds faces and their landmarks in images: facemark's detector and a landmark model.
#[pyclass(frozen, module = "facemark")]
struct Landmarker {
    // Boxed: burn's tensors are 64-byte aligned, more than the memory Python gives its objects
    // (16), and PyO3 stores the struct inline in that memory.
    pipeline: Box<FacePipeline>,
    model: String,
}

#[pymethods]
impl Landmarker {
    /// `model`: a shipped model's name or a run directory (default: the best shipped 68-point
    /// model); `min_face`: the smallest face looked for, in pixels (default: the detector's,
    /// as `facemark predict`); `refine`: landmark passes after the first, each from the previous
    /// pass's tight box, in detected and given boxes alike (as `facemark predict --min-face
    /// --refine`).
    #[new]
    #[pyo3(signature = (model=None, *, min_face=None, refine=1))]
    fn new(
        py: Python<'_>,
        model: Option<PathBuf>,
        min_face: Option<u32>,
        refine: usize,
    ) -> PyResult<Self> {
        let min_face = min_face.unwrap_or(DetectorConfig::default().min_face);
        let models_dir = package_models_dir(py)?;
        let model = match model {
            Some(path) => path
                .to_str()
                .ok_or_else(|| PyValueError::new_err(format!("{}: not UTF-8", path.display())))?
                .to_owned(),
            None => facemark::run::default_landmark_model(&models_dir)
                .map_err(run_error)?
                .to_owned(),
        };
        if min_face == 0 {
            return Err(PyValueError::new_err("min_face must be at least 1 pixel"));
        }
        let detector = DetectorConfig {
            min_face,
            ..DetectorConfig::default()
        };
        let mut pipeline = without_gil(py, || {
            FacePipeline::load_in(&model, &models_dir, detector).map_err(run_error)
        })?;
        pipeline.refine = refine;
        Ok(Self {
            pipeline: Box::new(pipeline),
            model,
        })
    }

    /// The model's name or run directory, as given.
    #[getter]
    fn model(&self) -> &str {
        &self.model
    }

    /// How many points each face gets (68 for the 300-W models).
    #[getter]
    fn num_points(&self) -> usize {
        self.pipeline.landmarker.model.contract.scheme.points
    }

    /// Every face the detector finds in `image`, with its points.
    fn __call__(&self, py: Python<'_>, image: &Bound<'_, PyAny>) -> PyResult<Vec<Face>> {
        self.predict(py, image, None)
    }

    /// The faces in the given `boxes` (`(left, top, width, height)` each), or every face the
    /// detector finds when `boxes` is `None`.
    #[pyo3(signature = (image, boxes=None))]
    fn predict(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        boxes: Option<Vec<BoxValues>>,
    ) -> PyResult<Vec<Face>> {
        let input = ImageInput::from_python(image, "image")?;
        let boxes = boxes.as_deref().map(face_boxes);
        let found = without_gil(py, || {
            let (gray, source) = input.into_gray().map_err(data_error)?;
            self.pipeline
                .predict(&gray, boxes.as_deref(), &source)
                .map_err(data_error)
        })?;
        Ok(found.iter().map(|p| Face::from_prediction(py, p)).collect())
    }

    /// [`Landmarker.predict`] for many images in one call: a list of faces per image.
    /// `boxes`, when given, holds one list of boxes per image.
    #[pyo3(signature = (images, boxes=None))]
    fn predict_batch(
        &self,
        py: Python<'_>,
        images: Vec<Bound<'_, PyAny>>,
        boxes: Option<Vec<Vec<BoxValues>>>,
    ) -> PyResult<Vec<Vec<Face>>> {
        if let Some(boxes) = &boxes
            && boxes.len() != images.len()
        {
            return Err(PyValueError::new_err(format!(
                "boxes holds {} lists for {} images: give one list of boxes per image",
                boxes.len(),
                images.len()
            )));
        }
        let inputs = images
            .iter()
            .enumerate()
            .map(|(i, image)| ImageInput::from_python(image, &format!("images[{i}]")))
            .collect::<PyResult<Vec<_>>>()?;
        let boxes: Vec<Option<Vec<FaceBox>>> = match &boxes {
            Some(lists) => lists.iter().map(|b| Some(face_boxes(b))).collect(),
            None => vec![None; inputs.len()],
        };
        let found = without_gil(py, || {
            inputs
                .into_iter()
                .zip(&boxes)
                .map(|(input, boxes)| {
                    let (gray, source) = input.into_gray()?;
                    self.pipeline.predict(&gray, boxes.as_deref(), &source)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(data_error)
        })?;
        Ok(found
            .iter()
            .map(|faces| faces.iter().map(|p| Face::from_prediction(py, p)).collect())
            .collect())
    }

    fn __repr__(&self) -> String {
        format!(
            "Landmarker(model={:?}, points={}, min_face={}, refine={})",
            self.model,
            self.num_points(),
            self.pipeline.detector.config().min_face,
            self.pipeline.refine
        )
    }
}

/// The points of a 300-W `.pts` file, `(N, 2)` float32 in facemark's pixel convention (the file's
/// 1-based coordinates minus 0.5).
#[pyfunction]
fn read_pts<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let points = without_gil(py, || {
        facemark::data::pts::read_pts(&path).map_err(data_error)
    })?;
    Ok(points_array(py, &points))
}

/// The images, boxes and points of a dlib XML label file.
#[pyfunction]
fn read_dlib_xml(py: Python<'_>, path: PathBuf) -> PyResult<Vec<LabeledFaces>> {
    let images: Vec<LabeledImage> = without_gil(py, || {
        facemark::data::dlib_xml::read_dlib_xml(&path).map_err(data_error)
    })?;
    images
        .into_iter()
        .map(|image| {
            let faces = image
                .faces
                .iter()
                .map(|f| {
                    let b = f.bbox;
                    let face = Face::new(
                        py,
                        Some((b.left, b.top, b.width, b.height)),
                        None,
                        &f.points,
                    );
                    Py::new(py, face)
                })
                .collect::<PyResult<Vec<_>>>()?;
            Ok(LabeledFaces {
                path: image.image_path,
                size: image.size,
                faces,
            })
        })
        .collect()
}

/// One face's normalised mean error, as a fraction (0.0325 is 3.25 %): the mean distance between
/// the predicted and true points divided by the inter-ocular distance (outer eye corners) for 68
/// points, else by the diagonal of the true points' bounding box.
#[pyfunction]
fn nme(predicted: &Bound<'_, PyAny>, truth: &Bound<'_, PyAny>) -> PyResult<f64> {
    let predicted = points_from_python(predicted, "predicted")?;
    let truth = points_from_python(truth, "truth")?;
    facemark::eval::shape_nme(&predicted, &truth)
        .map(|(nme, _)| nme)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The names of the models shipped with the package (`Landmarker(name)` loads them).
#[pyfunction]
fn shipped_models(py: Python<'_>) -> PyResult<Vec<String>> {
    let models_dir = package_models_dir(py)?;
    facemark::run::shipped_models(&models_dir).map_err(|source| {
        run_error(RunError::Read {
            path: models_dir.clone(),
            source,
        })
    })
}

#[pymodule]
fn _facemark(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Face>()?;
    module.add_class::<LabeledFaces>()?;
    module.add_class::<Landmarker>()?;
    module.add_function(wrap_pyfunction!(read_pts, module)?)?;
    module.add_function(wrap_pyfunction!(read_dlib_xml, module)?)?;
    module.add_function(wrap_pyfunction!(nme, module)?)?;
    module.add_function(wrap_pyfunction!(shipped_models, module)?)?;
    Ok(())
}
