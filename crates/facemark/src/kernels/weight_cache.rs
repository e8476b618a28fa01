//! Convolution weights packed for AMX tiles, kept between inference calls.
//!
//! Packing a layer's weights (rounding to bf16, rearranging into tiles) costs as much as a tenth
//! of a single face's forward pass, and at inference the weights never change. An entry is keyed
//! by the address and length of the weights' values and holds a clone of their tensor: the clone
//! keeps the storage alive, so the address cannot be reused for other values, and shared, so
//! burn's copy-on-write never changes it in place. An address therefore names the same values
//! for as long as its entry lives. Weights that nothing else holds (folded for one call) are
//! packed and not kept.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;

use super::conv::{self, ConvGeometry};

/// What an entry's packing depends on besides the values: their address and length, and the
/// geometry's channels, kernel and stride (which choose the layout); the precision is in force
/// for the whole process, and entries are only made when it is bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    address: usize,
    len: usize,
    channels: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
}

struct Entry {
    key: Key,
    /// Keeps the values at `key.address` alive and unchanged.
    _weight: FloatTensor<Flex>,
    packed: Arc<Vec<u16>>,
}

/// Entries kept: every convolution of the largest shipped model, several times over.
const CAPACITY: usize = 128;
/// Bytes of packed weights kept (the held f32 weights are twice this).
const CAPACITY_BYTES: usize = 128 << 20;

static CACHE: Mutex<VecDeque<Entry>> = Mutex::new(VecDeque::new());

/// `weight` packed for [`conv::forward_packed`] with geometry `g`, from the cache or packed now
/// and kept; `None` when the convolution does not use packed weights (f32, or no AMX) or the
/// tensor is not a contiguous f32 one.
pub(super) fn packed(weight: &FloatTensor<Flex>, g: &ConvGeometry) -> Option<Arc<Vec<u16>>> {
    packed_with(weight, g, |values| conv::packed_weights(g, values))
}

/// [`packed`] with the packing given (for layers packed as another geometry's convolution).
pub(super) fn packed_with(
    weight: &FloatTensor<Flex>,
    g: &ConvGeometry,
    pack: impl FnOnce(&[f32]) -> Option<Vec<u16>>,
) -> Option<Arc<Vec<u16>>> {
    let values = weight.as_slice::<f32>()?;
    if weight.is_unique() {
        // Weights nothing else holds were made for this call (a batch norm folded on the fly
        // when validating during training): they will not come again, so keeping them would
        // only hold memory.
        return pack(values).map(Arc::new);
    }
    let key = Key {
        address: values.as_ptr() as usize,
        len: values.len(),
        channels: [g.channels_in, g.channels_out],
        kernel: g.kernel,
        stride: g.stride,
    };
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(i) = cache.iter().position(|e| e.key == key) {
        // Most recently used at the back.
        let entry = cache.remove(i).expect("found above");
        let packed = entry.packed.clone();
        cache.push_back(entry);
        return Some(packed);
    }
    drop(cache);
    let packed = Arc::new(pack(values)?);
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache.push_back(Entry {
        key,
        _weight: weight.clone(),
        packed: packed.clone(),
    });
    let bytes = |cache: &VecDeque<Entry>| cache.iter().map(|e| 2 * e.packed.len()).sum::<usize>();
    while cache.len() > CAPACITY || (cache.len() > 1 && bytes(&cache) > CAPACITY_BYTES) {
        cache.pop_front();
    }
    Some(packed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::ops::FloatTensorOps;
    use burn::tensor::TensorData;

    fn tensor(values: Vec<f32>, shape: Vec<usize>) -> FloatTensor<Flex> {
        Flex::float_from_data(TensorData::new(values, shape), &Default::default())
    }

    /// A stand-in for the packing: the values' bits, halved, so a test sees what was packed.
    fn pack(values: &[f32]) -> Option<Vec<u16>> {
        Some(values.iter().map(|v| (v.to_bits() >> 16) as u16).collect())
    }

    #[test]
    fn an_entry_serves_the_same_values_and_other_values_are_packed_anew() {
        let g = ConvGeometry {
            batch: 1,
            channels_in: 4,
            channels_out: 4,
            height: 8,
            width: 8,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
        };
        let values = |step: usize| (0..144).map(|i| (i % step) as f32).collect::<Vec<_>>();
        let first = tensor(values(7), vec![4, 4, 3, 3]);
        // Held by nothing else (weights folded for one call): packed, not kept.
        let once = packed_with(&first, &g, pack).unwrap();
        let again = packed_with(&first, &g, pack).unwrap();
        assert!(!Arc::ptr_eq(&once, &again));
        // Held by a model as well (a parameter and the call's clone of it): kept.
        let held = first.clone();
        let a = packed_with(&first, &g, pack).unwrap();
        let b = packed_with(&first.clone(), &g, |_| panic!("served from the cache")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // Other values pack anew, even after the first tensor is dropped (the entry keeps its
        // buffer, so no new tensor can take over its address).
        drop((first, held));
        let second = tensor(values(5), vec![4, 4, 3, 3]);
        let _held = second.clone();
        let c = packed_with(&second, &g, pack).unwrap();
        assert_eq!(*c, pack(&values(5)).unwrap());
        // Another layout of the same values is another entry.
        let strided = ConvGeometry {
            stride: [2, 2],
            ..g
        };
        let d = packed_with(&second, &strided, |_| Some(vec![1])).unwrap();
        assert_eq!(*d, vec![1]);
        // Nothing to pack (f32), nothing kept.
        let third = tensor(values(3), vec![4, 4, 3, 3]);
        let _held = third.clone();
        assert!(packed_with(&third, &g, |_| None).is_none());
    }
}
