//! bf16 matrix products (AMX tiles) against f32: the convolution's forward pass and both
//! gradients stay within bf16's rounding. A test binary of its own, because the precision is
//! process-wide and the kernels' other tests hold f32 results to 1e-4.

use facemark::kernels::conv::{self, ConvGeometry};
use facemark::kernels::{self, Precision};

/// The precision is process-wide: tests that set it take turns (`cargo test` runs them on
/// threads of one process; nextest gives each its own).
static PRECISION: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn precision_lock() -> std::sync::MutexGuard<'static, ()> {
    PRECISION
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn values(count: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2654435761).max(1);
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// Largest difference relative to the largest reference value.
fn relative_gap(got: &[f32], reference: &[f32]) -> f32 {
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let gap = got
        .iter()
        .zip(reference)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    gap / scale
}

/// A model that only infers packs its weights once (`kernels::conv_norm` at inference keeps them
/// between calls): the kept packing gives exactly what packing anew gives.
#[test]
fn packed_weights_kept_between_calls_give_the_same_convolution() {
    use burn::module::{Module, Param};
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{BatchNormConfig, PaddingConfig2d};
    use burn::tensor::{Device, Tensor, TensorData};
    let _turn = precision_lock();
    kernels::set_precision(Precision::Bf16);
    let device = Device::flex();
    let g = ConvGeometry {
        batch: 2,
        channels_in: 32,
        channels_out: 32,
        height: 12,
        width: 12,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
    };
    let w = values(32 * 32 * 9, 11);
    let bias = values(32, 13);
    let conv = Conv2dConfig::new([32, 32], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let conv = burn::nn::conv::Conv2d {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(w.clone(), [32, 32, 3, 3]),
            &device,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias.clone(), [32]),
            &device,
        ))),
        ..conv
    };
    let (conv, norm) = kernels::fold_norm(conv, BatchNormConfig::new(32).init(&device).no_grad());
    for seed in [17, 19] {
        let x = values(2 * 32 * 144, seed);
        let expected = conv::forward(
            &g,
            &x,
            &conv.weight.val().into_data().try_to_vec::<f32>().unwrap(),
            Some(
                &conv
                    .bias
                    .as_ref()
                    .unwrap()
                    .val()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
            ),
            true,
        );
        // Twice: packed on the first call, from the kept packing on the second.
        for _ in 0..2 {
            let input =
                Tensor::<4>::from_data(TensorData::new(x.clone(), [2, 32, 12, 12]), &device);
            let y = kernels::conv_norm(&conv, &norm, true, input);
            assert_eq!(y.into_data().try_to_vec::<f32>().unwrap(), expected);
        }
    }
    kernels::set_precision(Precision::F32);
}

/// The inference-only fusions take the bf16 kernels too (the upsampling as a 1x1 convolution
/// on tiles, the log-prior map in the head's store): they stay within bf16's rounding of the
/// operations they replace, in f32.
#[test]
fn bf16_inference_fusions_stay_within_bf16_rounding() {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::{Conv2dConfig, ConvTranspose2dConfig};
    use burn::tensor::{Device, Distribution, Tensor};
    let _turn = precision_lock();
    let device = Device::flex();
    device.seed(3);
    let uniform = Distribution::Uniform(-1.0, 1.0);
    let x = Tensor::<4>::random([2, 32, 12, 12], uniform, &device);
    let head = Conv2dConfig::new([32, 40], [1, 1]).init(&device);
    let map = Tensor::<4>::random([1, 40, 12, 12], uniform, &device);
    let up = ConvTranspose2dConfig::new([32, 16], [2, 2])
        .with_stride([2, 2])
        .init(&device);
    let skip = Tensor::<4>::random([2, 16, 24, 24], uniform, &device);
    let conv = Conv2dConfig::new([32, 32], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    let run = |precision| {
        kernels::set_precision(precision);
        let out = [
            kernels::forward_conv_plus_map(&head, x.clone(), map.clone()),
            kernels::up_then_skip(&up, x.clone(), skip.clone()),
            kernels::forward_conv(&conv, x.clone()),
        ];
        out.map(|t| t.into_data().try_to_vec::<f32>().unwrap())
    };
    let reference = {
        kernels::set_precision(Precision::F32);
        [
            kernels::forward_conv(&head, x.clone()) + map.clone(),
            Tensor::cat(vec![up.forward(x.clone()), skip.clone()], 1),
            conv.forward(x.clone()),
        ]
        .map(|t| t.into_data().try_to_vec::<f32>().unwrap())
    };
    let bf16 = run(Precision::Bf16);
    kernels::set_precision(Precision::F32);
    for (what, (got, want)) in ["head with map", "upsampling + skip", "3x3 with bias"]
        .iter()
        .zip(bf16.iter().zip(&reference))
    {
        let gap = relative_gap(got, want);
        assert!(gap < 2e-2, "{what}: {gap}");
    }
}

#[test]
fn bf16_convolution_stays_within_bf16_rounding_of_f32() {
    let _turn = precision_lock();
    // Wide enough (64 outputs, depth 288) that the products go to tiles; 14x14 outputs take the
    // whole-batch products, 32x32 the per-image ones.
    for side in [14, 32] {
        check_geometry(ConvGeometry {
            batch: 2,
            channels_in: 32,
            channels_out: 64,
            height: side,
            width: side,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
        });
    }
    // Channels that fill no whole tile, an odd rectangle (odd shifts, rows that end inside a
    // tile), a 1x1 convolution and a 5x5 one without padding.
    for (channels_in, channels_out, kernel, padding) in [
        (20, 24, [3, 3], [1, 1]),
        (48, 17, [1, 1], [0, 0]),
        (16, 32, [5, 5], [0, 0]),
    ] {
        check_geometry(ConvGeometry {
            batch: 3,
            channels_in,
            channels_out,
            height: 13,
            width: 19,
            kernel,
            stride: [1, 1],
            padding,
        });
    }
}

fn check_geometry(g: ConvGeometry) {
    let x = values(g.batch * g.channels_in * g.height * g.width, 3);
    let taps = g.kernel[0] * g.kernel[1];
    let w = values(g.channels_out * g.channels_in * taps, 5);
    let dy = values(g.batch * g.channels_out * g.out_height() * g.out_width(), 7);
    let run = |precision| {
        kernels::set_precision(precision);
        let y = conv::forward(&g, &x, &w, None, false);
        let grads = conv::backward(&g, &x, &w, &dy, true);
        let dx = grads.input.expect("input gradient asked for");
        (y, dx, grads.weight)
    };
    let (y32, dx32, dw32) = run(Precision::F32);
    let (y16, dx16, dw16) = run(Precision::Bf16);
    kernels::set_precision(Precision::F32);
    for (name, got, reference) in [
        ("output", &y16, &y32),
        ("input gradient", &dx16, &dx32),
        ("weight gradient", &dw16, &dw32),
    ] {
        let gap = relative_gap(got, reference);
        // Operands carry 8 significant bits (relative rounding 2^-9); sums of a few hundred
        // products of independent roundings stay well inside 1 %.
        assert!(gap < 1e-2, "{name} at {}x{}: {gap}", g.height, g.width);
        if kernels::tiles_available() {
            assert!(gap > 0.0, "{name}: bf16 should round, so differ from f32");
        }
    }
}

#[test]
fn precision_reads_and_writes_its_names() {
    assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
    assert_eq!("f32".parse::<Precision>(), Ok(Precision::F32));
    assert!("fp8".parse::<Precision>().is_err());
    assert_eq!(serde_json::to_string(&Precision::Bf16).unwrap(), "\"bf16\"");
    let read: Precision = serde_json::from_str("\"f32\"").unwrap();
    assert_eq!(read, Precision::F32);
}
