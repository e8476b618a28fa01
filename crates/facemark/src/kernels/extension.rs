//! facemark's kernels (convolution, upsampling, batch norm, 2x2 max pooling) as a burn backend
//! extension: a forward pass for the flex backend and a backward pass for autodiff over flex.
//!
//! burn-flex computes a convolution's input gradient as a transposed convolution and its weight
//! gradient as a convolution with the batch as channels; both are matrix products here.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::{
    ActivationOps, ConvOptions, ConvTransposeOptions, FloatTensorOps, ModuleOps,
};
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, Backend, Dispatch, DispatchDevice, Flex, TensorMetadata, backend_extension,
};
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::{DType, Tensor, TensorData};

use super::conv::{self, ConvGeometry};
use super::norm::{self, NormGeometry};
use super::pool::{self, PoolGeometry};
use super::upsample::{self, UpGeometry};

/// Convolutions with facemark's kernels (see the module documentation); bias is added by the
/// callers with burn's own operations.
#[backend_extension(Flex, Autodiff)]
pub trait ConvKernels: Backend {
    fn facemark_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    fn facemark_conv_transpose2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvTransposeOptions<2>,
    ) -> FloatTensor<Self>;

    /// Per-channel mean and biased variance of `[B, C, H, W]`, as `[2, C]` (never differentiated).
    fn facemark_channel_statistics(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Batch normalisation with the batch's statistics `stats` (from
    /// `facemark_channel_statistics` of the same `x`).
    fn facemark_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// Inference: convolution, bias and (with `relu`) ReLU in one pass over the output.
    fn facemark_conv2d_bias_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// Inference: convolution, bias and a `[1, C_out, H_out, W_out]` map added to every image
    /// (the heatmap net's log-prior), in one pass over the output.
    fn facemark_conv2d_bias_map(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        map: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// Inference: a transposed convolution whose kernel equals its stride, with bias, followed
    /// along the channels by `skip` (the U-Net's upsampling and concatenation).
    fn facemark_up_then_skip(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        skip: FloatTensor<Self>,
        options: ConvTransposeOptions<2>,
    ) -> FloatTensor<Self>;

    /// 2x2 max pooling with stride 2 of an f32 `[B, C, H, W]`.
    fn facemark_max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The geometry of a 2x2 pooling the kernel handles (f32, 4-D).
fn pool_geometry(x: &FloatTensor<Flex>) -> Option<PoolGeometry> {
    let &[batch, channels, height, width] = &x.shape()[..] else {
        return None;
    };
    (x.dtype() == DType::F32).then_some(PoolGeometry {
        planes: batch * channels,
        height,
        width,
    })
}

fn pooled_shape(x: &FloatTensor<Flex>, g: &PoolGeometry) -> Vec<usize> {
    let shape = x.shape();
    vec![shape[0], shape[1], g.out_height(), g.out_width()]
}

/// The geometry of a convolution the kernels handle: f32, groups 1, dilation 1, symmetric
/// padding; `None` for anything else.
fn geometry(
    x_shape: &[usize],
    w_shape: &[usize],
    dtypes: &[DType],
    options: &ConvOptions<2>,
) -> Option<ConvGeometry> {
    let (&[batch, channels_in, height, width], &[channels_out, w_in, kh, kw]) = (x_shape, w_shape)
    else {
        return None;
    };
    let supported = dtypes.iter().all(|d| *d == DType::F32)
        && options.groups == 1
        && options.dilation == [1, 1]
        && !options.is_asymmetric()
        && w_in == channels_in;
    let g = ConvGeometry {
        batch,
        channels_in,
        channels_out,
        height,
        width,
        kernel: [kh, kw],
        stride: options.stride,
        padding: options.padding_begin(),
    };
    (supported && g.is_valid()).then_some(g)
}

/// The geometry of a transposed convolution the kernels handle: f32, kernel equal to the
/// stride, no padding, groups 1, dilation 1.
fn up_geometry(
    x: &FloatTensor<Flex>,
    weight: &FloatTensor<Flex>,
    options: &ConvTransposeOptions<2>,
) -> Option<UpGeometry> {
    let (&[batch, channels_in, height, width], &[w_in, channels_out, kh, kw]) =
        (&x.shape()[..], &weight.shape()[..])
    else {
        return None;
    };
    let supported = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && options.groups == 1
        && options.dilation == [1, 1]
        && options.padding == [0, 0]
        && options.padding_out == [0, 0]
        && options.stride == [kh, kw]
        && w_in == channels_in
        && [batch, channels_in, channels_out, height, width, kh, kw]
            .iter()
            .all(|&v| v > 0);
    supported.then_some(UpGeometry {
        batch,
        channels_in,
        channels_out,
        height,
        width,
        kernel: [kh, kw],
    })
}

fn flex_geometry(
    x: &FloatTensor<Flex>,
    weight: &FloatTensor<Flex>,
    options: &ConvOptions<2>,
) -> Option<ConvGeometry> {
    geometry(
        &x.shape(),
        &weight.shape(),
        &[x.dtype(), weight.dtype()],
        options,
    )
}

/// The tensor's values in row-major order.
fn values(tensor: &FloatTensor<Flex>) -> std::borrow::Cow<'_, [f32]> {
    match tensor.as_slice::<f32>() {
        Some(slice) => std::borrow::Cow::Borrowed(slice),
        None => std::borrow::Cow::Owned(tensor.to_contiguous().storage::<f32>().to_vec()),
    }
}

fn flex_tensor(values: Vec<f32>, shape: Vec<usize>) -> FloatTensor<Flex> {
    Flex::float_from_data(TensorData::new(values, shape), &Default::default())
}

/// The geometry of a batch norm the kernels handle (f32, 4-D).
fn norm_geometry(x: &FloatTensor<Flex>) -> Option<NormGeometry> {
    let &[batch, channels, h, w] = &x.shape()[..] else {
        return None;
    };
    (x.dtype() == DType::F32 && channels > 0).then_some(NormGeometry {
        batch,
        channels,
        plane: h * w,
    })
}

fn unsupported(what: &str) -> ! {
    // `batch_norm` below only routes f32 4-D tensors here; anything else is a bug.
    unreachable!("{what}: only f32 [B, C, H, W] tensors reach facemark's batch-norm kernel")
}

impl ConvKernels for Flex {
    fn facemark_channel_statistics(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let Some(g) = norm_geometry(&x) else {
            unsupported("channel statistics")
        };
        flex_tensor(norm::statistics(&g, &values(&x)), vec![2, g.channels])
    }

    fn facemark_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let Some(g) = norm_geometry(&x) else {
            unsupported("batch norm")
        };
        let y = norm::normalize(
            &g,
            &values(&x),
            &values(&gamma),
            &values(&beta),
            &values(&stats),
            epsilon,
        );
        flex_tensor(y, x.shape().to_vec())
    }

    fn facemark_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let Some(g) = flex_geometry(&x, &weight, &options) else {
            return Flex::conv2d(x, weight, None, options);
        };
        let y = conv::forward(&g, &values(&x), &values(&weight), None, false);
        flex_tensor(
            y,
            vec![g.batch, g.channels_out, g.out_height(), g.out_width()],
        )
    }

    fn facemark_conv2d_bias_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let Some(g) = flex_geometry(&x, &weight, &options).filter(|_| bias.dtype() == DType::F32)
        else {
            let y = Flex::conv2d(x, weight, Some(bias), options);
            return if relu { Flex::relu(y) } else { y };
        };
        let bias = values(&bias);
        let epilogue = conv::Epilogue {
            bias: Some(&bias),
            map: None,
            relu,
        };
        inference_conv(&g, &x, &weight, epilogue)
    }

    fn facemark_conv2d_bias_map(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        map: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let geometry = flex_geometry(&x, &weight, &options).filter(|g| {
            [bias.dtype(), map.dtype()] == [DType::F32; 2]
                && map.shape()[..] == [1, g.channels_out, g.out_height(), g.out_width()]
        });
        let Some(g) = geometry else {
            let channels = bias.shape()[0];
            let bias = Flex::float_reshape(bias, [1, channels, 1, 1].into());
            let y = Flex::float_add(Flex::conv2d(x, weight, None, options), bias);
            return Flex::float_add(y, map);
        };
        let (bias, map) = (values(&bias), values(&map));
        let epilogue = conv::Epilogue {
            bias: Some(&bias),
            map: Some(&map),
            relu: false,
        };
        inference_conv(&g, &x, &weight, epilogue)
    }

    fn facemark_up_then_skip(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        skip: FloatTensor<Self>,
        options: ConvTransposeOptions<2>,
    ) -> FloatTensor<Self> {
        let geometry = up_geometry(&x, &weight, &options).filter(|g| {
            let s = skip.shape();
            [bias.dtype(), skip.dtype()] == [DType::F32; 2]
                && s.len() == 4
                && s[0] == g.batch
                && s[2..] == [g.out_height(), g.out_width()]
        });
        let Some(g) = geometry else {
            let up = Flex::conv_transpose2d(x, weight, Some(bias), options);
            return Flex::float_cat(vec![up, skip], 1);
        };
        // The upsampling as a 1x1 convolution to C_out·k_h·k_w channels: one product for the
        // batch, its weights (transposed, then packed) kept between calls.
        let pointwise = upsample::pointwise_geometry(&g);
        let weights = values(&weight);
        let packed = super::weight_cache::packed_with(&weight, &pointwise, |w| {
            conv::packed_weights(&pointwise, &upsample::pointwise_weights(&g, w))
        });
        let blocks = match &packed {
            // Packed weights are all the product reads.
            Some(packed) => conv::forward_packed(
                &pointwise,
                &values(&x),
                &[],
                Some(packed),
                Default::default(),
            ),
            None => conv::forward(
                &pointwise,
                &values(&x),
                &upsample::pointwise_weights(&g, &weights),
                None,
                false,
            ),
        };
        let skip_channels = skip.shape()[1];
        let y = upsample::blocks_then_skip(&g, &blocks, &values(&bias), &values(&skip));
        flex_tensor(
            y,
            vec![
                g.batch,
                g.channels_out + skip_channels,
                g.out_height(),
                g.out_width(),
            ],
        )
    }

    fn facemark_max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let Some(g) = pool_geometry(&x) else {
            return Flex::max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false);
        };
        let y = pool::forward(&g, &values(&x));
        let shape = pooled_shape(&x, &g);
        flex_tensor(y, shape)
    }

    fn facemark_conv_transpose2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvTransposeOptions<2>,
    ) -> FloatTensor<Self> {
        let Some(g) = up_geometry(&x, &weight, &options) else {
            return Flex::conv_transpose2d(x, weight, None, options);
        };
        let y = upsample::forward(&g, &values(&x), &values(&weight));
        flex_tensor(
            y,
            vec![g.batch, g.channels_out, g.out_height(), g.out_width()],
        )
    }
}

/// A convolution at inference, whose weights are packed once and kept (`weight_cache`).
fn inference_conv(
    g: &ConvGeometry,
    x: &FloatTensor<Flex>,
    weight: &FloatTensor<Flex>,
    epilogue: conv::Epilogue,
) -> FloatTensor<Flex> {
    let packed = super::weight_cache::packed(weight, g);
    let y = conv::forward_packed(
        g,
        &values(x),
        &values(weight),
        packed.as_deref().map(Vec::as_slice),
        epilogue,
    );
    flex_tensor(
        y,
        vec![g.batch, g.channels_out, g.out_height(), g.out_width()],
    )
}

/// The backward pass: gradients for the parents that ask for one.
#[derive(Debug)]
struct ConvBackward;

type ConvState = (NodeId, NodeId, ConvGeometry);

fn register_gradients(
    ops: Ops<ConvState, 2>,
    grads: &mut Gradients,
    checkpointer: &mut Checkpointer,
) {
    let grad = grads.consume::<Flex>(&ops.node);
    let (x_state, weight_state, g) = ops.state;
    let x = checkpointer.retrieve_node_output::<FloatTensor<Flex>>(x_state);
    let weight = checkpointer.retrieve_node_output::<FloatTensor<Flex>>(weight_state);
    let [node_x, node_weight] = ops.parents;
    let computed = conv::backward(
        &g,
        &values(&x),
        &values(&weight),
        &values(&grad),
        node_x.is_some(),
    );
    if let (Some(node), Some(dx)) = (node_x, computed.input) {
        grads.register::<Flex>(node.id, flex_tensor(dx, x.shape().to_vec()));
    }
    if let Some(node) = node_weight {
        grads.register::<Flex>(
            node.id,
            flex_tensor(computed.weight, weight.shape().to_vec()),
        );
    }
}

impl Backward<Flex, 2> for ConvBackward {
    type State = ConvState;

    fn backward(self, ops: Ops<ConvState, 2>, grads: &mut Gradients, cp: &mut Checkpointer) {
        register_gradients(ops, grads, cp);
    }
}

/// The backward pass of the upsampling.
#[derive(Debug)]
struct UpBackward;

impl Backward<Flex, 2> for UpBackward {
    type State = (NodeId, NodeId, UpGeometry);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (x_state, weight_state, g) = ops.state;
        let x = cp.retrieve_node_output::<FloatTensor<Flex>>(x_state);
        let weight = cp.retrieve_node_output::<FloatTensor<Flex>>(weight_state);
        let [node_x, node_weight] = ops.parents;
        let (dx, dw) = upsample::backward(
            &g,
            &values(&x),
            &values(&weight),
            &values(&grad),
            node_x.is_some(),
        );
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, flex_tensor(dx, x.shape().to_vec()));
        }
        if let Some(node) = node_weight {
            grads.register::<Flex>(node.id, flex_tensor(dw, weight.shape().to_vec()));
        }
    }
}

/// The backward pass of the 2x2 max pooling.
#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    type State = (NodeId, PoolGeometry);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (x_state, g) = ops.state;
        let x = cp.retrieve_node_output::<FloatTensor<Flex>>(x_state);
        let [node_x] = ops.parents;
        if let Some(node) = node_x {
            let dx = pool::backward(&g, &values(&x), &values(&grad));
            grads.register::<Flex>(node.id, flex_tensor(dx, x.shape().to_vec()));
        }
    }
}

/// The backward pass of the batch norm.
#[derive(Debug)]
struct NormBackward;

impl Backward<Flex, 3> for NormBackward {
    type State = (NodeId, NodeId, FloatTensor<Flex>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (x_state, gamma_state, stats, epsilon) = ops.state;
        let x = cp.retrieve_node_output::<FloatTensor<Flex>>(x_state);
        let gamma = cp.retrieve_node_output::<FloatTensor<Flex>>(gamma_state);
        let Some(g) = norm_geometry(&x) else {
            unsupported("batch norm backward")
        };
        let (dx, dgamma, dbeta) = norm::backward(
            &g,
            &values(&x),
            &values(&gamma),
            &values(&stats),
            epsilon,
            &values(&grad),
        );
        let [node_x, node_gamma, node_beta] = ops.parents;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex_tensor(dx, x.shape().to_vec()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex_tensor(dgamma, vec![g.channels]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex_tensor(dbeta, vec![g.channels]));
        }
    }
}

impl<C: CheckpointStrategy> ConvKernels for Autodiff<Flex, C> {
    fn facemark_channel_statistics(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let stats = Flex::facemark_channel_statistics(x.primitive().clone());
        // A constant of the graph: its tiny `[2, C]` values enter as data.
        Self::float_from_data(stats.into_data(), &Default::default())
    }

    fn facemark_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let stats = stats.into_primitive();
        let forward =
            |x, gamma, beta, stats| Flex::facemark_batch_norm(x, gamma, beta, stats, epsilon);
        match NormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (
                    prep.checkpoint(&x),
                    prep.checkpoint(&gamma),
                    stats.clone(),
                    epsilon,
                );
                let y = forward(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    stats,
                );
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                stats,
            )),
        }
    }

    fn facemark_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let Some(g) = flex_geometry(x.primitive(), weight.primitive(), &options) else {
            return <Self as ModuleOps<Self>>::conv2d(x, weight, None, options);
        };
        record_with_weight::<C, _, _>(ConvBackward, x, weight, g, |x, w| {
            Flex::facemark_conv2d(x, w, options)
        })
    }

    fn facemark_conv2d_bias_relu(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
        relu: bool,
    ) -> FloatTensor<Self> {
        // Inference only in practice; with autodiff it is the composition of differentiable ops.
        let channels = bias.shape()[0];
        let bias = Self::float_reshape(bias, [1, channels, 1, 1].into());
        let y = Self::float_add(Self::facemark_conv2d(x, weight, options), bias);
        if relu { Self::relu(y) } else { y }
    }

    fn facemark_conv2d_bias_map(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        map: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        // Inference only in practice; with autodiff it is the composition of differentiable ops.
        let y = Self::facemark_conv2d_bias_relu(x, weight, bias, options, false);
        Self::float_add(y, map)
    }

    fn facemark_up_then_skip(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        skip: FloatTensor<Self>,
        options: ConvTransposeOptions<2>,
    ) -> FloatTensor<Self> {
        // Inference only in practice; with autodiff it is the composition of differentiable ops.
        let channels = bias.shape()[0];
        let bias = Self::float_reshape(bias, [1, channels, 1, 1].into());
        let up = Self::float_add(Self::facemark_conv_transpose2d(x, weight, options), bias);
        Self::float_cat(vec![up, skip], 1)
    }

    fn facemark_max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let Some(g) = pool_geometry(x.primitive()) else {
            return <Self as ModuleOps<Self>>::max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false);
        };
        // Compute-bound: burn keeps what the backward pass needs instead of recomputing it
        // (which would need a retro-forward).
        match PoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), g);
                prep.finish(state, Flex::facemark_max_pool_2x2(x.into_primitive()))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::facemark_max_pool_2x2(x.into_primitive()))
            }
        }
    }

    fn facemark_conv_transpose2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvTransposeOptions<2>,
    ) -> FloatTensor<Self> {
        let Some(g) = up_geometry(x.primitive(), weight.primitive(), &options) else {
            return <Self as ModuleOps<Self>>::conv_transpose2d(x, weight, None, options);
        };
        record_with_weight::<C, _, _>(UpBackward, x, weight, g, |x, w| {
            Flex::facemark_conv_transpose2d(x, w, options)
        })
    }
}

/// Records an operation of an input `x` and a weight on the autodiff graph (checkpointing both,
/// with `extra` for the backward pass) and runs `forward` on their flex tensors.
fn record_with_weight<C, Op, Extra>(
    op: Op,
    x: FloatTensor<Autodiff<Flex, C>>,
    weight: FloatTensor<Autodiff<Flex, C>>,
    extra: Extra,
    forward: impl FnOnce(FloatTensor<Flex>, FloatTensor<Flex>) -> FloatTensor<Flex>,
) -> FloatTensor<Autodiff<Flex, C>>
where
    C: CheckpointStrategy,
    Op: Backward<Flex, 2, State = (NodeId, NodeId, Extra)>,
    Extra: Clone + Send + std::fmt::Debug + 'static,
{
    match op
        .prepare::<C>([x.node(), weight.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let state = (prep.checkpoint(&x), prep.checkpoint(&weight), extra);
            prep.finish(state, forward(x.into_primitive(), weight.into_primitive()))
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(forward(x.into_primitive(), weight.into_primitive()))
        }
    }
}

/// Whether a tensor lives on the flex backend (with or without autodiff).
fn on_flex(x: &Tensor<4>) -> bool {
    matches!(
        x.device().as_dispatch().clone().inner(),
        DispatchDevice::Flex(_)
    )
}

/// A 2-D convolution, computed by facemark's kernels on the flex backend and by burn elsewhere.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    if !on_flex(&x) {
        return burn::tensor::module::conv2d(x, weight, bias, options);
    }
    if let (Some(bias), false) = (&bias, x.device().is_autodiff()) {
        // Inference: the bias added as the sums are stored, not by a pass of its own.
        return Tensor::from_dispatch(<Dispatch as ConvKernels>::facemark_conv2d_bias_relu(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.clone().into_dispatch(),
            options,
            false,
        ));
    }
    let y = Tensor::from_dispatch(<Dispatch as ConvKernels>::facemark_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ));
    add_bias(y, bias)
}

/// `conv.forward(x) + map`, `map` `[1, C_out, H_out, W_out]` added to every image: at inference
/// on flex in the convolution's own pass (the heatmap net's log-prior), else with burn's ops.
pub fn forward_conv_plus_map(conv: &Conv2d, x: Tensor<4>, map: Tensor<4>) -> Tensor<4> {
    let options = conv_options(conv);
    let (Some(options), true, false) = (options, on_flex(&x), x.device().is_autodiff()) else {
        return forward_conv(conv, x) + map;
    };
    let channels = conv.weight.dims()[0];
    let bias = match &conv.bias {
        Some(bias) => bias.val(),
        None => Tensor::zeros([channels], &x.device()),
    };
    Tensor::from_dispatch(<Dispatch as ConvKernels>::facemark_conv2d_bias_map(
        x.into_dispatch(),
        conv.weight.val().into_dispatch(),
        bias.into_dispatch(),
        map.into_dispatch(),
        options,
    ))
}

fn add_bias(y: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    match bias {
        Some(bias) => {
            let channels = bias.dims()[0];
            y + bias.reshape([1, channels, 1, 1])
        }
        None => y,
    }
}

/// A 2-D transposed convolution, computed by facemark's kernels on the flex backend when its
/// kernel equals its stride, and by burn otherwise.
pub fn conv_transpose2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvTransposeOptions<2>,
) -> Tensor<4> {
    if !on_flex(&x) {
        return burn::tensor::module::conv_transpose2d(x, weight, bias, options);
    }
    let y = Tensor::from_dispatch(<Dispatch as ConvKernels>::facemark_conv_transpose2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ));
    add_bias(y, bias)
}

/// `pool.forward(x)`: a 2x2, stride-2, unpadded max pooling through facemark's kernel on the
/// flex backend; burn's own for anything else.
pub fn max_pool(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    let plain = pool.kernel_size == [2, 2]
        && pool.stride == [2, 2]
        && pool.dilation == [1, 1]
        && !pool.ceil_mode
        && matches!(pool.padding, PaddingConfig2d::Valid);
    if !plain || !on_flex(&x) {
        return pool.forward(x);
    }
    Tensor::from_dispatch(<Dispatch as ConvKernels>::facemark_max_pool_2x2(
        x.into_dispatch(),
    ))
}

/// `up.forward(x)` through [`conv_transpose2d`].
pub fn forward_up(up: &ConvTranspose2d, x: Tensor<4>) -> Tensor<4> {
    let options = ConvTransposeOptions::new(
        up.stride,
        up.padding,
        up.padding_out,
        up.dilation,
        up.groups,
    );
    conv_transpose2d(
        x,
        up.weight.val(),
        up.bias.as_ref().map(|b| b.val()),
        options,
    )
}

/// `cat([up.forward(x), skip], 1)`, the U-Net decoder's input: at inference on flex in one
/// pass (the upsampling computed as one product for the batch and written next to the skip), else
/// through [`forward_up`] and burn's concatenation.
pub fn up_then_skip(up: &ConvTranspose2d, x: Tensor<4>, skip: Tensor<4>) -> Tensor<4> {
    let (Some(bias), true, false) = (&up.bias, on_flex(&x), x.device().is_autodiff()) else {
        return Tensor::cat(vec![forward_up(up, x), skip], 1);
    };
    let options = ConvTransposeOptions::new(
        up.stride,
        up.padding,
        up.padding_out,
        up.dilation,
        up.groups,
    );
    Tensor::from_dispatch(<Dispatch as ConvKernels>::facemark_up_then_skip(
        x.into_dispatch(),
        up.weight.val().into_dispatch(),
        bias.val().into_dispatch(),
        skip.into_dispatch(),
        options,
    ))
}

/// The options of `conv`; `None` for `Same` padding (left to burn).
fn conv_options(conv: &Conv2d) -> Option<ConvOptions<2>> {
    let ((top, bottom), (left, right)) = match conv.padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((top, bottom), (left, right)),
        PaddingConfig2d::Same => return None,
    };
    Some(ConvOptions::new_with_padding(
        conv.stride,
        [(top, bottom), (left, right)],
        conv.dilation,
        conv.groups,
    ))
}

/// `conv.forward(x)` through [`conv2d`] (burn's own for `Same` padding).
pub fn forward_conv(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let Some(options) = conv_options(conv) else {
        return conv.forward(x);
    };
    conv2d(
        x,
        conv.weight.val(),
        conv.bias.as_ref().map(|b| b.val()),
        options,
    )
}

/// `norm.forward(x)`: in training on flex through facemark's batch-norm kernel (the running
/// statistics updated as burn's `BatchNorm` does), otherwise burn's own.
pub fn batch_norm(norm: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    let training = x.device().is_autodiff() && norm.training.is_enabled();
    if !(training && on_flex(&x) && x.dtype() == DType::F32) {
        return norm.forward(x);
    }
    let stats = Tensor::<2>::from_dispatch(<Dispatch as ConvKernels>::facemark_channel_statistics(
        x.clone().into_dispatch(),
    ));
    let y = Tensor::from_dispatch(<Dispatch as ConvKernels>::facemark_batch_norm(
        x.into_dispatch(),
        norm.gamma.val().into_dispatch(),
        norm.beta.val().into_dispatch(),
        stats.clone().into_dispatch(),
        norm.epsilon,
    ));
    let channels = stats.dims()[1];
    let device = y.device();
    let [mean, variance] = [0, 1].map(|row| {
        stats
            .clone()
            .slice([row..row + 1, 0..channels])
            .reshape([channels])
            .detach()
    });
    let blend = |running: Tensor<1>, batch: Tensor<1>| {
        running
            .to_device(&device)
            .mul_scalar(1.0 - norm.momentum)
            .add(batch.mul_scalar(norm.momentum))
            .detach()
    };
    norm.running_mean
        .update(blend(norm.running_mean.value_sync(), mean));
    norm.running_var
        .update(blend(norm.running_var.value_sync(), variance));
    y
}

/// The convolution's weight and bias with `norm` (frozen) folded in: `w·γ/√(σ²+ε)` and
/// `β + (b − μ)·γ/√(σ²+ε)`.
fn folded_weights(conv: &Conv2d, norm: &BatchNorm) -> (Tensor<4>, Tensor<1>) {
    let device = conv.weight.val().device();
    let scale = norm.gamma.val()
        / norm
            .running_var
            .value()
            .to_device(&device)
            .add_scalar(norm.epsilon)
            .sqrt();
    let mean = norm.running_mean.value().to_device(&device);
    let shift = match &conv.bias {
        Some(b) => b.val() - mean,
        None => mean.neg(),
    };
    let bias = norm.beta.val() + shift * scale.clone();
    let channels = scale.dims()[0];
    let weight = conv.weight.val() * scale.reshape([channels, 1, 1, 1]);
    (weight, bias)
}

/// A norm that [`fold_norm`] emptied: the identity, marked by ε = 0 (never a trained norm's).
fn is_folded(norm: &BatchNorm) -> bool {
    norm.epsilon == 0.0
}

/// `conv` and `norm` with the norm's running statistics and affine part folded into the
/// convolution once, for a model that will only infer: [`conv_norm`] otherwise folds them on
/// every forward pass (for ResNet18, a pass over all its 11 M weights per face). The norm that
/// comes back is the identity (γ 1, β 0, μ 0, σ² 1, ε 0), so the pair computes what it computed
/// before on any backend; ε = 0 tells [`conv_norm`] to skip it.
pub fn fold_norm(conv: Conv2d, norm: BatchNorm) -> (Conv2d, BatchNorm) {
    use burn::module::{Param, RunningState};
    if is_folded(&norm) {
        return (conv, norm);
    }
    let (weight, bias) = folded_weights(&conv, &norm);
    let channels = bias.dims()[0];
    let device = bias.device();
    let conv = Conv2d {
        weight: conv.weight.map(|_| weight),
        bias: Some(match conv.bias {
            Some(old) => old.map(|_| bias),
            None => Param::from_tensor(bias),
        }),
        ..conv
    };
    let norm = BatchNorm {
        gamma: norm.gamma.map(|_| Tensor::ones([channels], &device)),
        beta: norm.beta.map(|_| Tensor::zeros([channels], &device)),
        running_mean: RunningState::new(Tensor::zeros([channels], &device)),
        running_var: RunningState::new(Tensor::ones([channels], &device)),
        epsilon: 0.0,
        ..norm
    };
    (conv, norm)
}

/// `norm.forward(conv.forward(x))`, then ReLU with `relu`. At inference (no autodiff, or a frozen
/// norm) the batch norm is folded into the convolution's weights and bias
/// (`w·γ/√(σ²+ε)`, `β + (b − μ)·γ/√(σ²+ε)`) and the three layers run as one pass on flex.
pub fn conv_norm(conv: &Conv2d, norm: &BatchNorm, relu: bool, x: Tensor<4>) -> Tensor<4> {
    let training = x.device().is_autodiff() && norm.training.is_enabled();
    let options = conv_options(conv);
    let (false, true, Some(options)) = (training, on_flex(&x), options) else {
        // Training (and other backends): facemark's batch-norm kernel where it applies.
        let y = batch_norm(norm, forward_conv(conv, x));
        return if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        };
    };
    let (weight, bias) = match (&conv.bias, is_folded(norm)) {
        (Some(bias), true) => (conv.weight.val(), bias.val()),
        _ => folded_weights(conv, norm),
    };
    Tensor::from_dispatch(<Dispatch as ConvKernels>::facemark_conv2d_bias_relu(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        options,
        relu,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Largest difference relative to the reference's largest magnitude.
    fn relative_error(ours: &Tensor<4>, reference: &Tensor<4>) -> f32 {
        let a = ours.to_data().try_to_vec::<f32>().unwrap();
        let b = reference.to_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        a.iter()
            .zip(&b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    /// Forward values and the gradients of x, weight and bias equal burn's conv2d.
    fn check(x_shape: [usize; 4], w_shape: [usize; 4], stride: usize, padding: usize, bias: bool) {
        let device = Device::flex().autodiff();
        device.seed(7);
        let uniform = Distribution::Uniform(-1.0, 1.0);
        let x = Tensor::<4>::random(x_shape, uniform, &device).require_grad();
        let w = Tensor::<4>::random(w_shape, uniform, &device).require_grad();
        let b = bias.then(|| Tensor::<1>::random([w_shape[0]], uniform, &device).require_grad());
        let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
        let ours = conv2d(x.clone(), w.clone(), b.clone(), options.clone());
        let reference = burn::tensor::module::conv2d(x.clone(), w.clone(), b.clone(), options);
        let case = format!("x {x_shape:?} w {w_shape:?} stride {stride} pad {padding} bias {bias}");
        assert!(relative_error(&ours, &reference) < 1e-4, "forward: {case}");

        let [ours, reference] = backward_both(ours, reference);
        assert_close(
            &format!("x gradient, {case}"),
            x.grad(&ours),
            x.grad(&reference),
        );
        assert_close(
            &format!("weight gradient, {case}"),
            w.grad(&ours),
            w.grad(&reference),
        );
        if let Some(b) = b {
            let as4 = |t: Option<Tensor<1>>| t.map(|t| t.reshape([1, 1, 1, w_shape[0]]));
            let (a, r) = (as4(b.grad(&ours)), as4(b.grad(&reference)));
            assert_close(&format!("bias gradient, {case}"), a, r);
        }
    }

    /// The gradients of the same random weighting of both outputs.
    fn backward_both(ours: Tensor<4>, reference: Tensor<4>) -> [burn::tensor::Gradients; 2] {
        let uniform = Distribution::Uniform(-1.0, 1.0);
        let r = Tensor::<4>::random(reference.dims(), uniform, &reference.device());
        [
            (ours * r.clone()).sum().backward(),
            (reference * r).sum().backward(),
        ]
    }

    /// Two gradients agree within 1e-4 of the reference's largest magnitude.
    fn assert_close(what: &str, ours: Option<Tensor<4>>, reference: Option<Tensor<4>>) {
        let e = relative_error(&ours.expect("gradient"), &reference.expect("gradient"));
        assert!(e < 1e-4, "{what} off by {e}");
    }

    #[test]
    fn forward_and_gradients_equal_burns_convolution() {
        crate::kernels::f32_products();
        check([2, 3, 12, 10], [5, 3, 3, 3], 1, 1, false);
        check([4, 8, 9, 9], [6, 8, 3, 3], 2, 1, false);
        check([1, 3, 16, 16], [4, 3, 7, 7], 2, 3, false);
        check([3, 6, 7, 5], [9, 6, 1, 1], 1, 0, true);
        check([2, 6, 8, 8], [4, 6, 1, 1], 2, 0, false);
        check([1, 16, 14, 14], [32, 16, 3, 3], 1, 1, true);
        // Images large enough for one matrix product per image (the others share one).
        check([3, 4, 36, 36], [5, 4, 3, 3], 1, 1, false);
        check([2, 3, 70, 66], [4, 3, 7, 7], 2, 3, true);
    }

    /// The same for the non-overlapping transposed convolution.
    fn check_up(x_shape: [usize; 4], w_shape: [usize; 4], bias: bool) {
        let device = Device::flex().autodiff();
        device.seed(11);
        let uniform = Distribution::Uniform(-1.0, 1.0);
        let x = Tensor::<4>::random(x_shape, uniform, &device).require_grad();
        let w = Tensor::<4>::random(w_shape, uniform, &device).require_grad();
        let b = bias.then(|| Tensor::<1>::random([w_shape[1]], uniform, &device).require_grad());
        let stride = [w_shape[2], w_shape[3]];
        let options = ConvTransposeOptions::new(stride, [0, 0], [0, 0], [1, 1], 1);
        let ours = conv_transpose2d(x.clone(), w.clone(), b.clone(), options.clone());
        let reference =
            burn::tensor::module::conv_transpose2d(x.clone(), w.clone(), b.clone(), options);
        let case = format!("x {x_shape:?} w {w_shape:?} bias {bias}");
        assert!(relative_error(&ours, &reference) < 1e-4, "forward: {case}");
        let [ours, reference] = backward_both(ours, reference);
        assert_close(
            &format!("x gradient, {case}"),
            x.grad(&ours),
            x.grad(&reference),
        );
        assert_close(
            &format!("weight gradient, {case}"),
            w.grad(&ours),
            w.grad(&reference),
        );
    }

    #[test]
    fn upsampling_forward_and_gradients_equal_burns_transposed_convolution() {
        crate::kernels::f32_products();
        check_up([2, 8, 5, 7], [8, 4, 2, 2], true);
        check_up([3, 6, 4, 4], [6, 5, 2, 2], false);
        check_up([1, 4, 3, 5], [4, 3, 3, 2], true);
    }

    #[test]
    fn max_pooling_forward_and_gradients_equal_burns() {
        crate::kernels::f32_products();
        use burn::nn::pool::MaxPool2dConfig;
        let device = Device::flex().autodiff();
        device.seed(13);
        let pool = MaxPool2dConfig::new([2, 2]).init();
        // Odd sides (the last row and column left out), enough planes for several tasks, and
        // ties (values on a coarse grid) that must go to the same input as burn's.
        for shape in [[2, 3, 6, 8], [3, 7, 9, 5], [1, 20, 4, 4]] {
            let x = Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), &device);
            let x = x.mul_scalar(3.0).round().require_grad();
            let ours = max_pool(&pool, x.clone());
            let reference = pool.forward(x.clone());
            assert!(
                relative_error(&ours, &reference) < 1e-6,
                "forward {shape:?}"
            );
            let [ours, reference] = backward_both(ours, reference);
            assert_close(
                &format!("x gradient {shape:?}"),
                x.grad(&ours),
                x.grad(&reference),
            );
        }
    }

    #[test]
    fn folded_batch_norm_equals_conv_then_norm_then_relu() {
        crate::kernels::f32_products();
        use burn::module::Module;
        use burn::nn::BatchNormConfig;
        use burn::nn::conv::Conv2dConfig;
        let train = Device::flex().autodiff();
        train.seed(3);
        let conv = Conv2dConfig::new([4, 6], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&train);
        let norm = BatchNormConfig::new(6).init(&train);
        // A few training batches move the running statistics away from 0 and 1.
        for _ in 0..3 {
            let x = Tensor::<4>::random([5, 4, 8, 8], Distribution::Normal(0.5, 2.0), &train);
            let _ = norm.forward(forward_conv(&conv, x));
        }
        let (conv, norm) = (conv.valid(), norm.valid());
        let x = Tensor::<4>::random(
            [2, 4, 8, 8],
            Distribution::Normal(0.5, 2.0),
            &Device::flex(),
        );
        for relu in [false, true] {
            let reference = norm.forward(conv.forward(x.clone()));
            let reference = if relu {
                burn::tensor::activation::relu(reference)
            } else {
                reference
            };
            let fused = conv_norm(&conv, &norm, relu, x.clone());
            assert!(relative_error(&fused, &reference) < 1e-5, "relu {relu}");
            // Folded once (as a predictor does at load), the pair computes the same, with burn's
            // own layers too (the emptied norm is the identity).
            let (folded_conv, folded_norm) = fold_norm(conv.clone(), norm.clone());
            assert_eq!(folded_norm.epsilon, 0.0);
            let once = conv_norm(&folded_conv, &folded_norm, relu, x.clone());
            assert!(
                relative_error(&once, &reference) < 1e-5,
                "folded once, relu {relu}"
            );
            let burn_layers = folded_norm.forward(folded_conv.forward(x.clone()));
            let burn_layers = if relu {
                burn::tensor::activation::relu(burn_layers)
            } else {
                burn_layers
            };
            assert!(
                relative_error(&burn_layers, &reference) < 1e-5,
                "burn's layers, relu {relu}"
            );
        }
    }

    #[test]
    fn training_batch_norm_equals_burns_values_gradients_and_running_statistics() {
        crate::kernels::f32_products();
        use burn::nn::BatchNormConfig;
        let device = Device::flex().autodiff();
        device.seed(5);
        let ours_norm = BatchNormConfig::new(6).init(&device);
        let reference_norm = ours_norm.clone();
        let x = Tensor::<4>::random([3, 6, 7, 5], Distribution::Normal(0.7, 2.0), &device)
            .require_grad();
        let ours = batch_norm(&ours_norm, x.clone());
        let reference = reference_norm.forward(x.clone());
        assert!(relative_error(&ours, &reference) < 1e-4, "forward");
        let [ours, reference] = backward_both(ours, reference);
        assert_close("x gradient", x.grad(&ours), x.grad(&reference));
        let as4 = |t: Tensor<1>| t.reshape([1, 1, 1, 6]);
        let gamma = |norm: &BatchNorm, g| norm.gamma.grad(g).map(as4);
        let beta = |norm: &BatchNorm, g| norm.beta.grad(g).map(as4);
        let pair = (gamma(&ours_norm, &ours), gamma(&reference_norm, &reference));
        assert_close("gamma gradient", pair.0, pair.1);
        let pair = (beta(&ours_norm, &ours), beta(&reference_norm, &reference));
        assert_close("beta gradient", pair.0, pair.1);
        for (a, b) in [
            (
                ours_norm.running_mean.value(),
                reference_norm.running_mean.value(),
            ),
            (
                ours_norm.running_var.value(),
                reference_norm.running_var.value(),
            ),
        ] {
            assert!(
                relative_error(&as4(a), &as4(b)) < 1e-4,
                "running statistics"
            );
        }
    }

    #[test]
    fn inference_tensors_use_the_kernels_too() {
        crate::kernels::f32_products();
        let device = Device::flex();
        let x = Tensor::<4>::random([1, 2, 6, 6], Distribution::Default, &device);
        let w = Tensor::<4>::random([3, 2, 3, 3], Distribution::Default, &device);
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let ours = conv2d(x.clone(), w.clone(), None, options.clone());
        let reference = burn::tensor::module::conv2d(x, w, None, options);
        assert!(relative_error(&ours, &reference) < 1e-5);
    }

    /// The inference-only fusions (bias in the convolution's pass, the log-prior map added as
    /// the head's sums are stored, upsampling written next to the skip connection) equal the
    /// operations they replace.
    #[test]
    fn inference_fusions_equal_the_operations_they_replace() {
        crate::kernels::f32_products();
        use burn::nn::conv::{Conv2dConfig, ConvTranspose2dConfig};
        let device = Device::flex();
        device.seed(5);
        let uniform = Distribution::Uniform(-1.0, 1.0);
        let x = Tensor::<4>::random([2, 24, 10, 10], uniform, &device);

        let conv = Conv2dConfig::new([24, 20], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let bias = conv.bias.as_ref().map(|b| b.val());
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let reference =
            burn::tensor::module::conv2d(x.clone(), conv.weight.val(), bias, options.clone());
        assert!(relative_error(&forward_conv(&conv, x.clone()), &reference) < 1e-5);

        let map = Tensor::<4>::random([1, 20, 10, 10], uniform, &device);
        let with_map = forward_conv_plus_map(&conv, x.clone(), map.clone());
        assert!(relative_error(&with_map, &(reference + map)) < 1e-5);

        let up = ConvTranspose2dConfig::new([24, 12], [2, 2])
            .with_stride([2, 2])
            .init(&device);
        let skip = Tensor::<4>::random([2, 12, 20, 20], uniform, &device);
        let ours = up_then_skip(&up, x.clone(), skip.clone());
        let reference = Tensor::cat(vec![up.forward(x), skip], 1);
        assert_eq!(ours.dims(), [2, 24, 20, 20]);
        assert!(relative_error(&ours, &reference) < 1e-5);
    }
}
