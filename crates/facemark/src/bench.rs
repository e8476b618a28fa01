//! Throughput benchmarks: training and inference images per second, on synthetic tensors and on
//! the real data pipeline, plus augmentation speed and peak memory. Each result is one JSON line.

use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;
use rand::Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::augment::sample_rng;
use crate::batch::images_tensor;
use crate::data::{Example, load_gray};
use crate::dataset::Dataset;
use crate::model::KeypointNet;
use crate::recipe::TrainConfig;

/// One benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub bench: &'static str,
    /// The model measured: a task's recipe, a run directory or a shipped model.
    pub model: String,
    pub backend: &'static str,
    pub batch_size: usize,
    pub images_per_s: f64,
    pub images: usize,
    pub seconds: f64,
}

/// Settings of a benchmark session.
pub struct BenchConfig {
    /// The model's name in the results.
    pub name: String,
    /// The recipe whose network, batch size and optimiser are measured.
    pub train: TrainConfig,
    /// Weights to start from (a trained model); `None` initialises the network afresh.
    pub weights: Option<std::path::PathBuf>,
    /// How long each measurement runs (after one warm-up batch).
    pub duration: Duration,
    /// The benchmarks to run by name (`train_synthetic`, `latency`, ...); empty runs them all.
    pub only: Vec<String>,
}

/// Every benchmark's name, in the order they run.
pub const BENCHMARKS: [&str; 6] = [
    "train_synthetic",
    "inference_synthetic",
    "train_real_pipeline",
    "augment",
    "decode_preprocess",
    "latency",
];

impl BenchConfig {
    /// Whether the benchmark `name` is to run.
    pub fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

fn result(
    bench: &'static str,
    config: &BenchConfig,
    images: usize,
    elapsed: Duration,
) -> BenchResult {
    BenchResult {
        bench,
        model: config.name.clone(),
        backend: crate::backend::name(),
        batch_size: config.train.batch_size,
        images_per_s: images as f64 / elapsed.as_secs_f64(),
        images,
        seconds: elapsed.as_secs_f64(),
    }
}

/// Repeats `step` (which processes `batch` images) for about `duration`, after one warm-up call.
fn measure(duration: Duration, batch: usize, mut step: impl FnMut(usize)) -> (usize, Duration) {
    step(0);
    let start = Instant::now();
    let mut images = 0;
    let mut i = 1;
    while start.elapsed() < duration {
        step(i);
        images += batch;
        i += 1;
    }
    (images, start.elapsed())
}

fn train_step(
    model: KeypointNet,
    optim: &mut burn::optim::ModuleOptimizer,
    lr: f64,
    examples: &[Example],
    device: &Device,
) -> KeypointNet {
    let loss = model.loss(images_tensor(examples, device), examples);
    let _: f32 = loss.clone().into_scalar(); // wait for the step, as training does
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optim.step(lr, model, grads)
}

/// Runs every benchmark; `data` (the real IMM data) enables the real-pipeline ones.
pub fn run(
    config: &BenchConfig,
    data: Option<&Dataset>,
    mut report: impl FnMut(&BenchResult),
) -> Result<(), crate::run::RunError> {
    let tc = &config.train;
    let device = crate::backend::training_device();
    device.seed(tc.seed);
    let (w, h) = tc.model.input_size();
    let b = tc.batch_size;
    let synthetic = synthetic_examples(b, w, h, tc.scheme().points, tc.seed);

    let initial = match &config.weights {
        Some(path) => crate::run::load_model(tc.model.init(&device), path)?,
        None => tc.model.init(&device),
    };
    let mut model = Some(initial);
    // The recipe's own optimiser, so the step measured is the step trained.
    let mut optim = tc.optimizer();
    if config.wants("train_synthetic") {
        let (n, t) = measure(config.duration, b, |_| {
            let m = model.take().expect("model present");
            model = Some(train_step(
                m,
                &mut optim,
                tc.learning_rate,
                &synthetic,
                &device,
            ));
        });
        report(&result("train_synthetic", config, n, t));
    }

    let inference_device = crate::backend::device();
    let net = model.as_ref().expect("model present").valid();
    let xi = Tensor::<4>::random(
        [b, 1, h, w],
        Distribution::Uniform(-0.5, 0.5),
        &inference_device,
    );
    if config.wants("inference_synthetic") {
        let (n, t) = measure(config.duration, b, |_| {
            let _ = net
                .forward(xi.clone())
                .into_point_lists(tc.model.decoding());
        });
        report(&result("inference_synthetic", config, n, t));
    }

    let Some(data) = data else { return Ok(()) };
    let train = &data.train;
    let sampling = tc.sampling();
    let order: Vec<usize> = (0..train.len()).collect();
    let batches: Vec<&[usize]> = order.chunks(b).filter(|c| c.len() == b).collect();

    // The training loop's own data path: decoded once, augmented (if configured) per batch.
    if config.wants("train_real_pipeline") {
        let (n, t) = measure(config.duration, b, |i| {
            let examples = data.training_batch(&sampling, batches[i % batches.len()], i);
            let m = model.take().expect("model present");
            model = Some(train_step(
                m,
                &mut optim,
                tc.learning_rate,
                &examples,
                &device,
            ));
        });
        report(&result("train_real_pipeline", config, n, t));
    }

    // Augmentation alone (the study's affine ranges when the recipe has none).
    let aug = tc.augment.clone().unwrap_or_default();
    if config.wants("augment") {
        let (n, t) = measure(config.duration, b, |i| {
            let indices = batches[i % batches.len()];
            let _: Vec<_> = indices
                .par_iter()
                .map(|&j| {
                    let mirror = sampling.mirror.as_deref();
                    aug.apply(&train[j].example, mirror, &mut sample_rng(tc.seed, i, j))
                })
                .collect();
        });
        report(&result("augment", config, n, t));
    }

    // Decoding the photos and preprocessing them to the model's input, with no cache.
    if !config.wants("decode_preprocess") {
        return Ok(());
    }
    let photos: Vec<&std::path::Path> = train.iter().map(|s| s.photo.as_path()).collect();
    let (n, t) = measure(config.duration, b, |i| {
        let start = (i * b) % photos.len().max(1);
        let _: Vec<_> = photos
            .iter()
            .cycle()
            .skip(start)
            .take(b)
            .collect::<Vec<_>>()
            .par_iter()
            .map(|path| load_gray(path).map(|gray| Example::from_gray(&gray, &[], w, h)))
            .collect();
    });
    report(&result("decode_preprocess", config, n, t));
    Ok(())
}

/// Single-face latency: what one face costs from a decoded photo to its points, with the model's
/// own test-time settings (crop, forward, decode, mirror averaging) and `refine` more passes from
/// its own landmark box.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    pub bench: &'static str,
    pub model: String,
    pub backend: &'static str,
    /// Faces timed (each alone, batch 1).
    pub faces: usize,
    /// Median milliseconds per face.
    pub ms_per_face: f64,
    pub p90_ms: f64,
    pub mirror_average: bool,
    /// Passes after the first, each from the previous pass's landmark box (0: one pass).
    pub refine: usize,
}

/// Times `faces` single faces (the validation faces of `data` when given, else a synthetic photo)
/// after three untimed ones; photo decoding is not timed.
pub fn latency(
    config: &BenchConfig,
    data: Option<&Dataset>,
    faces: usize,
    refine: usize,
) -> Result<LatencyResult, crate::run::RunError> {
    let device = crate::backend::device();
    let net = match &config.weights {
        Some(path) => crate::run::load_model(config.train.model.init(&device), path)?,
        None => config.train.model.init(&device),
    };
    let predictor = crate::inference::Predictor::new(config.train.clone(), net);
    let mut photos: Vec<(image::GrayImage, Vec<crate::data::FaceBox>)> = Vec::new();
    for sample in data
        .map(|d| d.val.as_slice())
        .unwrap_or_default()
        .iter()
        .take(faces.max(1))
    {
        if let Ok(photo) = crate::data::images::load_photo(&sample.photo) {
            photos.push((photo.into_luma8(), sample.bbox.into_iter().collect()));
        }
    }
    if photos.is_empty() {
        let mut rng = sample_rng(config.train.seed, 0, 0);
        let noise = image::GrayImage::from_fn(400, 400, |_, _| image::Luma([rng.random::<u8>()]));
        let bbox = crate::data::FaceBox {
            left: 100.0,
            top: 100.0,
            width: 200.0,
            height: 200.0,
        };
        photos.push((noise, vec![bbox]));
    }
    let source = std::path::Path::new("latency");
    let mut times = Vec::with_capacity(faces);
    for i in 0..faces.max(1) + 3 {
        let (gray, boxes) = &photos[i % photos.len()];
        let started = Instant::now();
        let _ = predictor.predict_refined(gray, boxes, source, refine);
        if i >= 3 {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let ms_per_face = crate::study::median(&mut times);
    Ok(LatencyResult {
        bench: "latency",
        model: config.name.clone(),
        backend: crate::backend::name(),
        faces: times.len(),
        ms_per_face,
        p90_ms: times[times.len() * 9 / 10],
        mirror_average: predictor.model.contract.mirror_average,
        refine,
    })
}

impl BenchConfig {
    /// The benchmark of `name`: a run directory or shipped model (its recipe and weights), a
    /// directory holding only a recipe (`config.json`, as `train --print-config` writes it:
    /// freshly initialised weights, to time a net before training it), else a task's recipe (the best one with `best`, else the study's without augmentation), with the
    /// batch size and optionally the input side set.
    pub fn resolve(
        name: &str,
        best: bool,
        batch_size: usize,
        input_size: Option<usize>,
        duration: Duration,
    ) -> Result<Self, crate::study::StudyError> {
        let (train, weights) = match crate::run::load_trained(name, &crate::backend::device()) {
            Ok(loaded) => (loaded.config, Some(loaded.source)),
            Err(not_a_model) => {
                let recipe_only = crate::run::RunDir::new(std::path::Path::new(name));
                if recipe_only.config().is_file() {
                    return Self::from_recipe(
                        name,
                        recipe_only.read_config()?,
                        batch_size,
                        input_size,
                        duration,
                    );
                }
                let Ok(task) = name.parse::<crate::recipe::Task>() else {
                    return Err(not_a_model.into());
                };
                let mut config = crate::recipe::TrainConfig::recipe(
                    task,
                    if best {
                        crate::recipe::RecipeKind::Best
                    } else {
                        crate::recipe::RecipeKind::Study
                    },
                );
                if !best {
                    config.augment = None;
                }
                (config, None)
            }
        };
        let mut bench = Self::from_recipe(name, train, batch_size, input_size, duration)?;
        bench.weights = weights;
        Ok(bench)
    }

    /// The benchmark of a recipe with fresh weights, the batch size and optionally the input side
    /// set.
    fn from_recipe(
        name: &str,
        mut train: crate::recipe::TrainConfig,
        batch_size: usize,
        input_size: Option<usize>,
        duration: Duration,
    ) -> Result<Self, crate::study::StudyError> {
        train.batch_size = batch_size;
        if let Some(size) = input_size
            && !train.set_input_size(size)
        {
            return Err(crate::recipe::RecipeError::Invalid(format!(
                "{name} has a fixed input size"
            ))
            .into());
        }
        Ok(Self {
            name: name.to_owned(),
            train,
            weights: None,
            duration,
            only: Vec::new(),
        })
    }
}

/// `count` images of uniform noise with random points, for the synthetic benchmarks.
fn synthetic_examples(count: usize, w: usize, h: usize, points: usize, seed: u64) -> Vec<Example> {
    let mut rng = sample_rng(seed, 0, 0);
    (0..count)
        .map(|_| Example {
            width: w,
            height: h,
            pixels: (0..w * h).map(|_| rng.random_range(-0.5..0.5)).collect(),
            points: (0..points)
                .map(|_| [rng.random_range(0.0..1.0), rng.random_range(0.0..1.0)])
                .collect(),
        })
        .collect()
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
