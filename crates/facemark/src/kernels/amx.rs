//! Matrix products on Intel AMX tiles: operands rounded to bf16, products summed in f32.
//!
//! A CPU with AMX (Sapphire Rapids and later) multiplies a 16x32 bf16 tile by a 32x16 one into a
//! 16x16 f32 tile in one instruction: about 16 times the multiply-adds per cycle of AVX-512 FMA.
//! Rounding the operands to bf16 (8 significant bits) is what mixed-precision training does on
//! every current accelerator; sums stay in f32. [`super::Precision`] chooses between this and
//! the exact f32 products of `gemm`.
//!
//! Layout: the left operand is packed into 16x32 tiles (one row of 32 bf16 = 64 bytes), the
//! right one into "VNNI" tiles (16 rows of 16 column pairs: row `p` holds `k = 2p, 2p + 1`), both
//! zero-padded to whole tiles, so the inner loop loads full tiles only. Each step computes a
//! 32x32 block of the product in four accumulator tiles.

use rayon::prelude::*;

use super::conv::{ConvGeometry, Mat};
use super::for_each_chunk;

/// bf16 values in one tile row (64 bytes), and so the depth of one tile step.
const DEPTH: usize = 32;
/// Rows of a tile, and f32 columns of an accumulator tile.
const EDGE: usize = 16;
/// bf16 values in one packed tile.
const TILE: usize = EDGE * DEPTH;
/// Bytes between the rows of every tile facemark loads or stores.
const ROW_BYTES: usize = 64;

/// Whether this CPU has AMX with bf16 and the kernel lets the process use its tile registers.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    let has_amx = leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0;
    // Packing converts with AVX512-BF16 (every CPU with AMX-BF16 has it; checked all the same).
    let has_amx = has_amx && std::arch::is_x86_feature_detected!("avx512bf16");
    // Linux hands the 8 KiB tile state out only on request (arch_prctl ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA); the permission holds for every thread of the process.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    has_amx
        && unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        } == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Whether a product with `m` rows and depth `k` gains from tiles: with fewer, packing the right
/// operand (one pass over it) costs more than the f32 product (`amx::tests::throughput_against_gemm`
/// measures 16-row and 16-deep products at 0.5-0.7x of gemm's f32 speed, 32 and more at 1.3-2x).
pub(super) fn pays(m: usize, k: usize) -> bool {
    m >= 2 * EDGE && k >= DEPTH
}

/// Whether a convolution with `rows` output channels gains from tiles when its column matrix is
/// packed straight from the image ([`ConvColumns`]), replacing the f32 im2col.
pub(super) fn pays_packed(rows: usize) -> bool {
    rows >= EDGE
}

/// f32 bits rounded to nearest even at bit 16 (bf16 in the top half); a NaN stays a NaN.
#[inline(always)]
fn rounded_bits(v: f32) -> u32 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    // A select, not a branch, so packing loops vectorise.
    if (bits & 0x7fff_ffff) > 0x7f80_0000 {
        bits | 0x0040_0000
    } else {
        rounded
    }
}

/// f32 to bf16, rounding to nearest even.
#[inline(always)]
fn to_bf16(v: f32) -> u16 {
    (rounded_bits(v) >> 16) as u16
}

/// Two f32 as a bf16 pair in one word, `low` first in memory.
#[inline(always)]
fn bf16_pair(low: f32, high: f32) -> u32 {
    (rounded_bits(high) & 0xffff_0000) | (rounded_bits(low) >> 16)
}

/// Reads element `(row, col)` of a strided matrix.
#[inline(always)]
fn at(data: &[f32], shape: Mat, row: usize, col: usize) -> f32 {
    data[row * shape.row_stride as usize + col * shape.col_stride as usize]
}

fn blocks(len: usize, edge: usize) -> usize {
    len.div_ceil(edge)
}

/// Packs `lhs` (`m x k`) into row tiles: tile `(t, s)` holds rows `16t..` and depth `32s..`.
fn pack_lhs(lhs: &[f32], shape: Mat, packed: &mut [u16], parallel: bool) {
    // SAFETY: only called after `available`, which checks AVX512-BF16 (AMX implies AVX-512).
    unsafe { pack_lhs_avx512(lhs, shape, packed, parallel) }
}

/// `n ≤ 16` lanes set, from the lowest.
fn lanes(n: usize) -> u16 {
    if n >= 16 { 0xffff } else { (1u16 << n) - 1 }
}

/// Loads the first `count ≤ 16` values at `data[0..]` into a vector, zero in the other lanes.
///
/// # Safety
/// `data` must hold `count` values; needs AVX-512F.
#[inline(always)]
unsafe fn load_up_to(data: &[f32], count: usize) -> std::arch::x86_64::__m512 {
    debug_assert!(count <= data.len());
    // SAFETY: the mask selects only lanes inside `data`; masked loads touch no other lane.
    unsafe { std::arch::x86_64::_mm512_maskz_loadu_ps(lanes(count), data.as_ptr()) }
}

/// 32 values as bf16 (round to nearest even; NaN stays NaN; denormals flush to zero) in order:
/// `low`'s 16, then `high`'s.
///
/// # Safety
/// Needs AVX512-BF16.
#[inline(always)]
unsafe fn bf16_in_order(
    low: std::arch::x86_64::__m512,
    high: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // SAFETY: the caller has AVX512-BF16; __m512bh and __m512i are both 64 plain bytes.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(high, low)) }
}

/// VNNI words of 16 columns: word `c` holds `low[c]` in its low half and `high[c]` in its high
/// half, as bf16.
///
/// # Safety
/// Needs AVX512-BF16 and AVX512-BW.
#[inline(always)]
unsafe fn bf16_pairs(
    low: std::arch::x86_64::__m512,
    high: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // Halfword `2c` takes `low[c]` (halfword c of the conversion), `2c + 1` takes `high[c]`
    // (halfword 16 + c).
    const INTERLEAVE: [u16; 32] = {
        let mut index = [0u16; 32];
        let mut c = 0;
        while c < 16 {
            index[2 * c] = c as u16;
            index[2 * c + 1] = 16 + c as u16;
            c += 1;
        }
        index
    };
    // SAFETY: the caller has AVX512-BF16 and AVX512-BW; the index is 64 readable bytes.
    unsafe {
        let index = _mm512_loadu_si512(INTERLEAVE.as_ptr().cast());
        _mm512_permutexvar_epi16(index, bf16_in_order(low, high))
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_lhs_avx512(lhs: &[f32], shape: Mat, packed: &mut [u16], parallel: bool) {
    use std::arch::x86_64::*;
    let depth_steps = blocks(shape.cols, DEPTH);
    let pack_rows = |(t, tiles): (usize, &mut [u16])| {
        for r in 0..EDGE {
            let row = t * EDGE + r;
            for s in 0..depth_steps {
                let out = &mut tiles[s * TILE + r * DEPTH..][..DEPTH];
                if row >= shape.rows {
                    out.fill(0);
                    continue;
                }
                let cols = (shape.cols - s * DEPTH).min(DEPTH);
                if shape.col_stride == 1 {
                    let src = &lhs[row * shape.row_stride as usize + s * DEPTH..][..cols];
                    // SAFETY: AVX512-BF16 is enabled here; each load stays inside `src` and
                    // the store writes `out`'s 64 bytes.
                    unsafe {
                        let low = load_up_to(src, cols.min(EDGE));
                        let high = load_up_to(&src[cols.min(EDGE)..], cols.saturating_sub(EDGE));
                        _mm512_storeu_si512(out.as_mut_ptr().cast(), bf16_in_order(low, high));
                    }
                } else {
                    for (c, o) in out[..cols].iter_mut().enumerate() {
                        *o = to_bf16(at(lhs, shape, row, s * DEPTH + c));
                    }
                    out[cols..].fill(0);
                }
            }
        }
    };
    for_each_chunk(packed, depth_steps * TILE, parallel, pack_rows);
}

/// Column tiles packed and multiplied per job: 128 columns, whose packed depth stays in L2.
const TILES_PER_JOB: usize = 8;
/// Column tiles per job when they are read in place: one pair, so that few tiles (a weight
/// gradient's) still spread over the threads.
const TILES_PER_JOB_IN_PLACE: usize = 2;

/// Packs column tiles `first_tile..` of `rhs` (`k x n`) into `tiles` as VNNI tiles, one word per
/// bf16 pair: tile `(t, s)` holds columns `16(first_tile + t)..` and depth `32s..`, its row `p`
/// the pairs `(rhs[32s + 2p][c], rhs[32s + 2p + 1][c])` for its 16 columns `c`.
fn pack_rhs(rhs: &[f32], shape: Mat, first_tile: usize, tiles: &mut [u32]) {
    // SAFETY: AMX tiles imply AVX-512 (every CPU with AMX has it); only called after `available`.
    unsafe { pack_rhs_avx512(rhs, shape, first_tile, tiles) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_rhs_avx512(rhs: &[f32], shape: Mat, first_tile: usize, tiles: &mut [u32]) {
    use std::arch::x86_64::*;
    let depth_steps = blocks(shape.rows, DEPTH);
    let words_per_tile = TILE / 2;
    let (k, n) = (shape.rows, shape.cols);
    let tile_count = tiles.len() / (depth_steps * words_per_tile);
    let tile_row = |t: usize, pair: usize| -> usize {
        let (s, p) = (2 * pair / DEPTH, (2 * pair % DEPTH) / 2);
        (t * depth_steps + s) * words_per_tile + p * EDGE
    };
    tiles.fill(0);
    if shape.col_stride == 1 {
        // Row-major: pairs of rows, read along the columns.
        let row = |r: usize| &rhs[r * shape.row_stride as usize..];
        for pair in 0..k.div_ceil(2) {
            let low = row(2 * pair);
            let high = (2 * pair + 1 < k).then(|| row(2 * pair + 1));
            for t in 0..tile_count {
                let first = (first_tile + t) * EDGE;
                let cols = (n - first).min(EDGE);
                // SAFETY: AVX512-BF16 is enabled here; the loads read `cols` values inside
                // each row and the store writes the tile row's 16 words.
                unsafe {
                    let low = load_up_to(&low[first..], cols);
                    let high = match high {
                        Some(high) => load_up_to(&high[first..], cols),
                        None => _mm512_setzero_ps(),
                    };
                    let out = &mut tiles[tile_row(t, pair)..][..EDGE];
                    _mm512_storeu_si512(out.as_mut_ptr().cast(), bf16_pairs(low, high));
                }
            }
        }
    } else if shape.row_stride == 1 {
        // Column-major (a transposed row-major operand): a column's depth values are adjacent,
        // so 32 of them in memory order are already 16 VNNI pairs; each pair goes to its own
        // tile row, so the 16 words of a column are scattered 16 words apart.
        let offsets = lane_offsets(EDGE);
        for t in 0..tile_count {
            let first = (first_tile + t) * EDGE;
            for c in 0..(n - first).min(EDGE) {
                let column = &rhs[(first + c) * shape.col_stride as usize..][..k];
                for s in 0..depth_steps {
                    let depth = (k - s * DEPTH).min(DEPTH);
                    let values = &column[s * DEPTH..][..depth];
                    let at = tile_row(t, s * DEPTH / 2) + c;
                    // SAFETY: AVX512-BF16 is enabled; the loads stay inside `values`; the
                    // scatter writes words `at + 16p` (p < 16) of this tile, inside `tiles`.
                    unsafe {
                        let words = bf16_in_order(
                            load_up_to(values, depth.min(EDGE)),
                            load_up_to(&values[depth.min(EDGE)..], depth.saturating_sub(EDGE)),
                        );
                        _mm512_i32scatter_epi32::<4>(
                            tiles[at..].as_mut_ptr().cast(),
                            offsets,
                            words,
                        );
                    }
                }
            }
        }
    } else {
        for t in 0..tile_count {
            let first = (first_tile + t) * EDGE;
            for c in 0..(n - first).min(EDGE) {
                let column = |r: usize| at(rhs, shape, r, first + c);
                for pair in 0..k.div_ceil(2) {
                    let high = if 2 * pair + 1 < k {
                        column(2 * pair + 1)
                    } else {
                        0.0
                    };
                    tiles[tile_row(t, pair) + c] = bf16_pair(column(2 * pair), high);
                }
            }
        }
    }
}

thread_local! {
    /// Each thread's packed left operand, kept between calls.
    static LHS_PACKED: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
    /// Each thread's packed right-operand block, kept between calls.
    static RHS_BLOCK: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
    /// Each thread's bf16 copy of a convolution's images ([`ConvInPlace`]), kept between calls.
    static IN_PLACE_WORDS: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
    /// Each thread's pixel-pair copy of a convolution's inputs ([`ConvWeightGradient`]).
    static PIXEL_PAIRS: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
    /// Each thread's packed output gradient ([`ConvWeightGradient`]).
    static OUTPUT_GRADIENT: std::cell::Cell<Vec<u16>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The 64-byte tile configuration (`LDTILECFG`'s operand).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// Tile registers 0-3 accumulate, 4-5 hold left tiles, 6-7 right tiles: all 16 rows of 64 bytes.
#[cfg(target_arch = "x86_64")]
fn configure_tiles() {
    let mut config = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        config.bytes_per_row[t] = ROW_BYTES as u16;
        config.rows[t] = EDGE as u8;
    }
    // SAFETY: only called after `available()` granted the tile state; the config is valid.
    unsafe {
        std::arch::asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
    }
}

/// Where a block's right tiles lie: depth step `s` at `rhs + steps[s]` (bf16 units), its rows
/// `stride` bytes apart.
#[derive(Clone, Copy)]
struct RhsSteps<'a> {
    steps: &'a [usize],
    stride: usize,
}

/// [`block`] for one choice of its tile counts.
type BlockKernel = unsafe fn(
    *const u16,
    *const u16,
    *const u16,
    *const u16,
    RhsSteps,
    &mut [[f32; EDGE * EDGE]; 4],
);

/// One 32x32 (or smaller, by whole tiles) block of the product: `out` gets `TWO_ROWS + 1` row
/// tiles by `TWO_COLS + 1` column tiles, 16x16 f32 each, row-major per tile.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block<const TWO_ROWS: bool, const TWO_COLS: bool>(
    lhs: *const u16,
    lhs_next: *const u16,
    rhs: *const u16,
    rhs_next: *const u16,
    rhs_steps: RhsSteps,
    out: &mut [[f32; EDGE * EDGE]; 4],
) {
    use std::arch::asm;
    let stride = ROW_BYTES;
    let rhs_stride = rhs_steps.stride;
    // SAFETY (whole body): the caller passes packed left tiles for every step and right tiles
    // at every step's offset, and the tiles were configured by `configure_tiles` on this thread.
    unsafe {
        asm!("tilezero tmm0", options(nostack, nomem));
        if TWO_COLS {
            asm!("tilezero tmm1", options(nostack, nomem));
        }
        if TWO_ROWS {
            asm!("tilezero tmm2", options(nostack, nomem));
        }
        if TWO_ROWS && TWO_COLS {
            asm!("tilezero tmm3", options(nostack, nomem));
        }
        for (s, &step) in rhs_steps.steps.iter().enumerate() {
            let offset = s * TILE;
            asm!("tileloadd tmm4, [{0} + {1}]", in(reg) lhs.add(offset), in(reg) stride, options(nostack, readonly));
            asm!("tileloadd tmm6, [{0} + {1}]", in(reg) rhs.add(step), in(reg) rhs_stride, options(nostack, readonly));
            asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem));
            if TWO_COLS {
                asm!("tileloadd tmm7, [{0} + {1}]", in(reg) rhs_next.add(step), in(reg) rhs_stride, options(nostack, readonly));
                asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem));
            }
            if TWO_ROWS {
                asm!("tileloadd tmm5, [{0} + {1}]", in(reg) lhs_next.add(offset), in(reg) stride, options(nostack, readonly));
                asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem));
            }
            if TWO_ROWS && TWO_COLS {
                asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
            }
        }
        asm!("tilestored [{0} + {1}], tmm0", in(reg) out[0].as_mut_ptr(), in(reg) stride, options(nostack));
        if TWO_COLS {
            asm!("tilestored [{0} + {1}], tmm1", in(reg) out[1].as_mut_ptr(), in(reg) stride, options(nostack));
        }
        if TWO_ROWS {
            asm!("tilestored [{0} + {1}], tmm2", in(reg) out[2].as_mut_ptr(), in(reg) stride, options(nostack));
        }
        if TWO_ROWS && TWO_COLS {
            asm!("tilestored [{0} + {1}], tmm3", in(reg) out[3].as_mut_ptr(), in(reg) stride, options(nostack));
        }
    }
}

/// The right operand of a product, packed into VNNI tiles block by block as the product needs it,
/// so that a large operand (a convolution's column matrix) is never written out whole.
pub(super) trait Columns: Sync {
    /// Depth (rows of the operand).
    fn depth(&self) -> usize;
    /// Column tiles (16 columns each).
    fn tiles(&self) -> usize;
    /// Packs column tiles `first_tile..` into `tiles` (as many as it holds), zero-padded. Columns
    /// read in place need not: by default their tiles are copied from where they lie.
    fn pack(&self, first_tile: usize, tiles: &mut [u32]) {
        self.in_place()
            .expect("columns that do not read in place pack their tiles")
            .pack(first_tile, tiles);
    }
    /// Where column tile `tile`'s columns go in the product's first row: `(index, count)`.
    fn destination(&self, tile: usize) -> (usize, usize);
    /// Distance between the product's rows in the destination.
    fn row_stride(&self) -> usize;
    /// Tiles the product can read where they lie, with no packing (see [`InPlace`]).
    fn in_place(&self) -> Option<InPlace<'_>> {
        None
    }
}

/// Right tiles read in place: column tile `t`, depth step `s` starts at word
/// `origins[t] + steps[s]` of `words` (VNNI pairs), its 16 rows `stride_words` apart.
pub(super) struct InPlace<'a> {
    words: &'a [u32],
    origins: Vec<usize>,
    steps: Vec<usize>,
    stride_words: usize,
}

impl InPlace<'_> {
    /// Copies column tiles `first_tile..` into the packed layout of [`Columns::pack`].
    fn pack(&self, first_tile: usize, tiles: &mut [u32]) {
        let words_per_tile = TILE / 2;
        for (t, block) in tiles
            .chunks_mut(self.steps.len() * words_per_tile)
            .enumerate()
        {
            for (s, &step) in self.steps.iter().enumerate() {
                for r in 0..EDGE {
                    let from = self.origins[first_tile + t] + step + r * self.stride_words;
                    block[s * words_per_tile + r * EDGE..][..EDGE]
                        .copy_from_slice(&self.words[from..][..EDGE]);
                }
            }
        }
    }
}

/// A strided `k x n` matrix as [`Columns`].
struct Strided<'a> {
    data: &'a [f32],
    shape: Mat,
}

impl Columns for Strided<'_> {
    fn depth(&self) -> usize {
        self.shape.rows
    }

    fn tiles(&self) -> usize {
        blocks(self.shape.cols, EDGE)
    }

    fn pack(&self, first_tile: usize, tiles: &mut [u32]) {
        pack_rhs(self.data, self.shape, first_tile, tiles);
    }

    fn destination(&self, tile: usize) -> (usize, usize) {
        (tile * EDGE, (self.shape.cols - tile * EDGE).min(EDGE))
    }

    fn row_stride(&self) -> usize {
        self.shape.cols
    }
}

/// A batch's convolution column matrices (per image `[C_in·k_h·k_w, H_out·W_out]`, laid out as
/// `conv::im2col` would write it) as [`Columns`], packed straight from the images: a column tile
/// is 16 output pixels of one output row of one image (a row's last tile zero-padded), so with
/// stride 1 each of its rows is one masked load from an input row. The product lands as
/// `[B, C_out, H_out·W_out]`, so one product serves the whole batch and its weights are packed
/// once.
pub(super) struct ConvColumns<'a> {
    g: &'a ConvGeometry,
    images: &'a [f32],
    tiles_per_row: usize,
    /// Each patch position's input plane offset and kernel offsets (less the padding).
    positions: Vec<(usize, isize, isize)>,
}

impl<'a> ConvColumns<'a> {
    pub(super) fn new(g: &'a ConvGeometry, images: &'a [f32]) -> Self {
        check_images(g, images);
        let [kh, kw] = g.kernel;
        let positions = (0..g.channels_in * kh * kw)
            .map(|k| {
                let (ci, r) = (k / (kh * kw), k % (kh * kw));
                let ky = (r / kw) as isize - g.padding[0] as isize;
                let kx = (r % kw) as isize - g.padding[1] as isize;
                (ci * g.height * g.width, ky, kx)
            })
            .collect();
        Self {
            g,
            images,
            tiles_per_row: g.out_width().div_ceil(EDGE),
            positions,
        }
    }

    fn tiles_per_image(&self) -> usize {
        self.g.out_height() * self.tiles_per_row
    }
}

impl Columns for ConvColumns<'_> {
    fn depth(&self) -> usize {
        self.g.channels_in * self.g.kernel[0] * self.g.kernel[1]
    }

    fn tiles(&self) -> usize {
        self.g.batch * self.tiles_per_image()
    }

    fn pack(&self, first_tile: usize, tiles: &mut [u32]) {
        // SAFETY: AMX tiles imply AVX-512; only called after `available`.
        unsafe { self.pack_avx512(first_tile, tiles) }
    }

    fn destination(&self, tile: usize) -> (usize, usize) {
        conv_destination(self.g, self.tiles_per_row, tile)
    }

    fn row_stride(&self) -> usize {
        self.g.out_height() * self.g.out_width()
    }
}

impl ConvColumns<'_> {
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_avx512(&self, first_tile: usize, tiles: &mut [u32]) {
        use std::arch::x86_64::*;
        let g = self.g;
        let depth = self.depth();
        let depth_steps = blocks(depth, DEPTH);
        let words_per_tile = TILE / 2;
        let per_tile_block = depth_steps * words_per_tile;
        let (height, width) = (g.height as isize, g.width as isize);
        let out_width = g.out_width();
        let positions = &self.positions;
        // The 16 input values of patch position `k` for the tile's pixels (zero outside). A
        // macro, not a closure, so that it inlines with this function's AVX-512.
        macro_rules! patch_values {
            ($image:expr, $k:expr, $oy:expr, $ox0:expr, $valid:expr) => {{
                let (plane, ky, kx) = positions[$k];
                let iy = ($oy * g.stride[0]) as isize + ky;
                if iy < 0 || iy >= height {
                    _mm512_setzero_ps()
                } else {
                    let row = &$image[plane + iy as usize * g.width..][..g.width];
                    let ix0 = ($ox0 * g.stride[1]) as isize + kx;
                    if g.stride[1] == 1 {
                        let first = (-ix0).clamp(0, $valid as isize) as usize;
                        let end = (width - ix0).clamp(0, $valid as isize) as usize;
                        let mask = lanes(end) & !lanes(first);
                        // SAFETY: only lanes inside the row are read (masked loads do not touch
                        // the others); the pointer is offset, never dereferenced, outside it.
                        unsafe { _mm512_maskz_loadu_ps(mask, row.as_ptr().wrapping_offset(ix0)) }
                    } else {
                        let mut values = [0.0f32; EDGE];
                        for (lane, v) in values.iter_mut().enumerate().take($valid) {
                            let ix = ix0 + (lane * g.stride[1]) as isize;
                            if (0..width).contains(&ix) {
                                *v = row[ix as usize];
                            }
                        }
                        // SAFETY: reads the 16 values of a local array.
                        unsafe { _mm512_loadu_ps(values.as_ptr()) }
                    }
                }
            }};
        }
        let tile_count = tiles.len() / per_tile_block;
        let pairs = depth.div_ceil(2);
        let (per_image, image_len) = (self.tiles_per_image(), g.channels_in * g.height * g.width);
        for t in 0..tile_count {
            let (image, tile) = ((first_tile + t) / per_image, (first_tile + t) % per_image);
            let image = &self.images[image * image_len..][..image_len];
            let (oy, ox0) = (
                tile / self.tiles_per_row,
                (tile % self.tiles_per_row) * EDGE,
            );
            let valid = (out_width - ox0).min(EDGE);
            let block = &mut tiles[t * per_tile_block..][..per_tile_block];
            for pair in 0..depth_steps * DEPTH / 2 {
                let word = if pair < pairs {
                    let low = patch_values!(image, 2 * pair, oy, ox0, valid);
                    let high = if 2 * pair + 1 < depth {
                        patch_values!(image, 2 * pair + 1, oy, ox0, valid)
                    } else {
                        _mm512_setzero_ps()
                    };
                    // SAFETY: AVX512-BF16 and AVX512-BW are enabled here.
                    unsafe { bf16_pairs(low, high) }
                } else {
                    _mm512_setzero_si512()
                };
                let at = (pair / (DEPTH / 2)) * words_per_tile + (pair % (DEPTH / 2)) * EDGE;
                // SAFETY: `at + 16 <= per_tile_block` (pair < depth_steps * 16).
                unsafe { _mm512_storeu_si512(block[at..][..EDGE].as_mut_ptr().cast(), word) };
            }
        }
    }
}

/// Whether a convolution can read its column tiles in place ([`ConvInPlace`]): stride 1 and at
/// least 16 input channels (fewer would leave most of each 32-deep step zero).
pub(super) fn reads_in_place(g: &ConvGeometry) -> bool {
    g.stride == [1, 1] && g.channels_in >= EDGE && pays_packed(g.channels_out)
}

/// The batch's images are all there.
fn check_images(g: &ConvGeometry, images: &[f32]) {
    assert!(
        images.len() >= g.batch * g.channels_in * g.height * g.width,
        "the images fit the geometry"
    );
}

/// A stride-1 convolution's column matrices, never built: the images are copied once into bf16
/// planes, zero-padded, with channels `2p` and `2p + 1` interleaved in plane `p` (a VNNI pair per
/// pixel), so the 16 pixels of a column tile at one kernel offset and 32 channels are 16 rows of
/// 64 contiguous bytes, one plane apart: one tile load, no packing. Depth runs kernel offset by
/// offset, 32 channels each (zero channels pad the last 32), so the weights are rearranged to
/// match ([`in_place_weights`]).
pub(super) struct ConvInPlace<'a> {
    g: &'a ConvGeometry,
    words: Vec<u32>,
    /// Channel blocks of 32 (16 planes each).
    channel_blocks: usize,
    padded: [usize; 2],
    tiles_per_row: usize,
}

impl<'a> ConvInPlace<'a> {
    pub(super) fn new(g: &'a ConvGeometry, images: &[f32]) -> Self {
        assert!(g.stride == [1, 1], "stride 1");
        check_images(g, images);
        let (h, w) = (g.height, g.width);
        let channel_blocks = g.channels_in.div_ceil(DEPTH);
        let padded = [h + 2 * g.padding[0], w + 2 * g.padding[1]];
        let plane = padded[0] * padded[1];
        let planes = g.batch * channel_blocks * EDGE;
        // A tile of the last row may read up to 15 words past the last plane (its columns past
        // the output row are thrown away).
        // Every word is written below (padding as zeros), so a reused buffer needs no clearing.
        let mut words = IN_PLACE_WORDS.take();
        words.resize(planes * plane + EDGE, 0);
        words[planes * plane..].fill(0);
        let channel = |b: usize, c: usize| &images[(b * g.channels_in + c) * h * w..][..h * w];
        let [top, left] = g.padding;
        for_each_chunk(&mut words[..planes * plane], plane, true, |(i, out)| {
            let (b, p) = (i / (channel_blocks * EDGE), i % (channel_blocks * EDGE));
            if 2 * p >= g.channels_in {
                out.fill(0);
                return;
            }
            let low = channel(b, 2 * p);
            let high = (2 * p + 1 < g.channels_in).then(|| channel(b, 2 * p + 1));
            out[..top * padded[1]].fill(0);
            out[(top + h) * padded[1]..].fill(0);
            for y in 0..h {
                let row = &mut out[(y + top) * padded[1]..][..padded[1]];
                row[..left].fill(0);
                row[left + w..].fill(0);
                // SAFETY: only called after `available`, which checks AVX512-BF16.
                unsafe {
                    interleave_row(
                        &low[y * w..][..w],
                        high.map(|c| &c[y * w..][..w]),
                        &mut row[left..][..w],
                    )
                };
            }
        });
        Self {
            g,
            words,
            channel_blocks,
            padded,
            tiles_per_row: g.out_width().div_ceil(EDGE),
        }
    }

    /// Depth of the product: 32 channels per block, for every kernel offset.
    fn padded_depth(&self) -> usize {
        self.g.kernel[0] * self.g.kernel[1] * self.channel_blocks * DEPTH
    }

    fn tiles_per_image(&self) -> usize {
        self.g.out_height() * self.tiles_per_row
    }
}

/// The weights `[C_out, C_in, k_h, k_w]` of a convolution read in place ([`ConvInPlace`]),
/// packed as its left operand in its depth order (zero for the padding channels and rows), in
/// one pass. They depend on the geometry's channels and kernel only, so a model that only infers
/// can pack them once.
pub(super) fn in_place_weights(g: &ConvGeometry, weight: &[f32]) -> Vec<u16> {
    let channel_blocks = g.channels_in.div_ceil(DEPTH);
    let offsets = g.kernel[0] * g.kernel[1];
    let depth_steps = offsets * channel_blocks;
    let filter = g.channels_in * offsets;
    assert!(
        weight.len() >= g.channels_out * filter,
        "a filter per output channel"
    );
    let mut packed = vec![0u16; blocks(g.channels_out, EDGE) * depth_steps * TILE];
    for_each_chunk(&mut packed, depth_steps * TILE, true, |(t, tiles)| {
        for r in 0..EDGE.min(g.channels_out - t * EDGE) {
            let filters = &weight[(t * EDGE + r) * filter..][..filter];
            for o in 0..offsets {
                for block in 0..channel_blocks {
                    let channels = (g.channels_in - block * DEPTH).min(DEPTH);
                    let out =
                        &mut tiles[(o * channel_blocks + block) * TILE + r * DEPTH..][..DEPTH];
                    // SAFETY: only called after `available` (AVX512-BF16); the gather
                    // reads taps `o` of `channels` channels inside `filters`.
                    unsafe {
                        gather_taps(
                            &filters[block * DEPTH * offsets + o..],
                            offsets,
                            channels,
                            out,
                        )
                    };
                }
            }
        }
    });
    packed
}

/// `lhs` packed into row tiles, as [`matmul_packed`] takes its left operand.
pub(super) fn packed_rows(lhs: &[f32], shape: Mat) -> Vec<u16> {
    let mut packed = vec![0u16; blocks(shape.rows, EDGE) * blocks(shape.cols, DEPTH) * TILE];
    pack_lhs(lhs, shape, &mut packed, true);
    packed
}

impl Drop for ConvInPlace<'_> {
    fn drop(&mut self) {
        IN_PLACE_WORDS.set(std::mem::take(&mut self.words));
    }
}

/// `[0, stride, 2·stride, ..., 15·stride]`: the lanes' offsets of a strided gather or scatter.
#[target_feature(enable = "avx512f")]
fn lane_offsets(stride: usize) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(stride as i32),
    )
}

/// `out[c] = bf16(taps[c * stride])` for `c < count ≤ 32`, zero beyond.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn gather_taps(taps: &[f32], stride: usize, count: usize, out: &mut [u16]) {
    use std::arch::x86_64::*;
    debug_assert!(count <= DEPTH && out.len() >= DEPTH);
    debug_assert!(count == 0 || (count - 1) * stride < taps.len());
    let index = lane_offsets(stride);
    let half = |first: usize| {
        let n = count.saturating_sub(first).min(EDGE);
        if n == 0 {
            return _mm512_setzero_ps();
        }
        // SAFETY: the mask gathers the `n` taps `first..first + n`, all inside `taps`.
        unsafe {
            _mm512_mask_i32gather_ps::<4>(
                _mm512_setzero_ps(),
                lanes(n),
                index,
                taps.as_ptr().add(first * stride),
            )
        }
    };
    // SAFETY: AVX512-BF16 is enabled here; the store writes `out`'s first 32 values.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), bf16_in_order(half(0), half(EDGE))) };
}

/// Writes `(low[i], high[i])` as VNNI bf16 pairs into `out[i]` (`high` zero when absent).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleave_row(low: &[f32], high: Option<&[f32]>, out: &mut [u32]) {
    use std::arch::x86_64::*;
    for (start, chunk) in out.chunks_mut(EDGE).enumerate() {
        let (first, count) = (start * EDGE, chunk.len());
        // SAFETY: AVX512-BF16 and AVX512-BW are enabled here; the loads read `count` values
        // inside each row; the masked store writes `count` words of `chunk`.
        unsafe {
            let l = load_up_to(&low[first..], count);
            let h = high.map_or(_mm512_setzero_ps(), |high| {
                load_up_to(&high[first..], count)
            });
            _mm512_mask_storeu_epi32(chunk.as_mut_ptr().cast(), lanes(count), bf16_pairs(l, h));
        }
    }
}

impl Columns for ConvInPlace<'_> {
    fn depth(&self) -> usize {
        self.padded_depth()
    }

    fn tiles(&self) -> usize {
        self.g.batch * self.tiles_per_image()
    }

    fn destination(&self, tile: usize) -> (usize, usize) {
        conv_destination(self.g, self.tiles_per_row, tile)
    }

    fn row_stride(&self) -> usize {
        self.g.out_height() * self.g.out_width()
    }

    fn in_place(&self) -> Option<InPlace<'_>> {
        let [ph, pw] = self.padded;
        let plane = ph * pw;
        let [kh, kw] = self.g.kernel;
        let per_image = self.tiles_per_image();
        let image_words = self.channel_blocks * EDGE * plane;
        let origins = (0..self.tiles())
            .map(|tile| {
                let (b, t) = (tile / per_image, tile % per_image);
                let (oy, ox) = (t / self.tiles_per_row, (t % self.tiles_per_row) * EDGE);
                b * image_words + oy * pw + ox
            })
            .collect();
        let steps = (0..kh * kw)
            .flat_map(|o| {
                (0..self.channel_blocks)
                    .map(move |block| block * EDGE * plane + (o / kw) * pw + o % kw)
            })
            .collect();
        Some(InPlace {
            words: &self.words,
            origins,
            steps,
            stride_words: plane,
        })
    }
}

/// A stride-1 convolution's weight gradient as one product, read in place:
/// `dW[C_out, (tap, C_in)] = dy[C_out, pixels] · X[pixels, (tap, C_in)]`, where column `(tap, c)`
/// of `X` is channel `c` of the zero-padded input shifted by the tap. The depth runs over every
/// image's output pixels in rows of the padded width (`dy` is zero in the extra columns, and zero
/// up to a multiple of 32 per image), so a tap's shift is a constant offset into the input. The
/// input is copied once into bf16 words `(x[p][c], x[p + 1][c])` for each channel `c` of a pixel
/// pair, 16 channels contiguous: a tile is 16 pixel pairs of 16 channels, rows one pair apart.
/// Odd shifts read a second copy paired from odd pixels.
pub(super) struct ConvWeightGradient<'a> {
    g: &'a ConvGeometry,
    words: Vec<u32>,
    /// Channels rounded up to whole tiles.
    channels: usize,
    padded_width: usize,
    /// Depth per image (output rows of the padded width, rounded up to 32).
    image_depth: usize,
    /// Words per image in one parity's copy.
    image_words: usize,
}

impl<'a> ConvWeightGradient<'a> {
    pub(super) fn new(g: &'a ConvGeometry, images: &[f32]) -> Self {
        assert!(g.stride == [1, 1], "stride 1");
        check_images(g, images);
        let (h, w) = (g.height, g.width);
        let [top, left] = g.padding;
        let padded_width = w + 2 * left;
        let padded_len = (h + 2 * top) * padded_width;
        let image_depth = (g.out_height() * padded_width).div_ceil(DEPTH) * DEPTH;
        let last_shift = (g.kernel[0] - 1) * padded_width + g.kernel[1] - 1;
        // Pairs read: up to the last depth pair plus the largest shift, and one for odd shifts.
        let pairs = (image_depth + last_shift) / 2 + 2;
        let channels = g.channels_in.div_ceil(EDGE) * EDGE;
        let image_words = pairs * channels;
        let mut words = PIXEL_PAIRS.take();
        words.resize(2 * g.batch * image_words, 0);
        // Per image and 16 channels: the channels' zero-padded planes (flattened, zero past the
        // end), then each run of 16 pixel pairs of each channel converted at once and scattered
        // to its 16 pairs, one channel column of the copy. Every word is written.
        let plane_len = 2 * pairs + 2 * DEPTH;
        let parity_words = g.batch * image_words;
        let shared = SendWords(words.as_mut_ptr());
        (0..g.batch * channels / EDGE)
            .into_par_iter()
            .for_each(|task| {
                // The whole wrapper: a closure would capture only its raw (not Send) field.
                let out = shared;
                let (b, block) = (task / (channels / EDGE), task % (channels / EDGE));
                let mut planes = vec![0.0f32; EDGE * plane_len];
                for (c, plane) in planes.chunks_exact_mut(plane_len).enumerate() {
                    let c = block * EDGE + c;
                    if c >= g.channels_in {
                        continue;
                    }
                    let image = &images[(b * g.channels_in + c) * h * w..][..h * w];
                    for (y, row) in image.chunks_exact(w).enumerate() {
                        plane[(y + top) * padded_width + left..][..w].copy_from_slice(row);
                    }
                }
                debug_assert!(padded_len <= plane_len);
                for parity in 0..2 {
                    let first_word = parity * parity_words + b * image_words + block * EDGE;
                    for first_pair in (0..pairs).step_by(EDGE) {
                        let count = (pairs - first_pair).min(EDGE);
                        for (c, plane) in planes.chunks_exact(plane_len).enumerate() {
                            let run = &plane[2 * first_pair + parity..][..2 * EDGE];
                            let at = first_word + first_pair * channels + c;
                            // SAFETY: AVX512-BF16 (checked by `available`); the run lies in the
                            // plane (`plane_len` ≥ 2 pairs + 33); the scatter writes `count` words
                            // `channels` apart from `at`, inside this task's pairs and channels
                            // (tasks write disjoint words).
                            unsafe { scatter_pairs(run, out.0.add(at), channels, count) };
                        }
                    }
                }
            });
        Self {
            g,
            words,
            channels,
            padded_width,
            image_depth,
            image_words,
        }
    }

    /// `dy` `[B, C_out, H_out, W_out]` packed as the product's left operand (rows of the padded
    /// width, zero beyond the output row and the image's depth).
    pub(super) fn packed_output_gradient(&self, dy: &[f32]) -> Vec<u16> {
        let g = self.g;
        let (oh, ow) = (g.out_height(), g.out_width());
        assert!(
            dy.len() >= g.batch * g.channels_out * oh * ow,
            "dy fits the geometry"
        );
        let depth_steps = g.batch * self.image_depth / DEPTH;
        let mut packed = OUTPUT_GRADIENT.take();
        packed.clear();
        packed.resize(blocks(g.channels_out, EDGE) * depth_steps * TILE, 0);
        packed
            .par_chunks_mut(depth_steps * TILE)
            .enumerate()
            .for_each(|(t, tiles)| {
                for r in 0..EDGE.min(g.channels_out - t * EDGE) {
                    let co = t * EDGE + r;
                    for b in 0..g.batch {
                        let plane = &dy[(b * g.channels_out + co) * oh * ow..][..oh * ow];
                        for (y, row) in plane.chunks_exact(ow).enumerate() {
                            let depth = b * self.image_depth + y * self.padded_width;
                            // SAFETY: AVX512-BF16 (checked by `available`); the run's depth
                            // positions lie inside this row tile's steps.
                            unsafe { store_run(row, depth, r, tiles) };
                        }
                    }
                }
            });
        packed
    }

    /// Hands a packed output gradient's buffer back for the next call.
    pub(super) fn recycle(packed: Vec<u16>) {
        OUTPUT_GRADIENT.set(packed);
    }

    /// The product `[C_out, taps · channels]` as the weight gradient `[C_out, C_in, k_h, k_w]`.
    pub(super) fn weight_gradient(&self, product: &[f32]) -> Vec<f32> {
        let g = self.g;
        let taps = g.kernel[0] * g.kernel[1];
        let mut dw = vec![0.0f32; g.channels_out * g.channels_in * taps];
        for (co, filters) in dw.chunks_exact_mut(g.channels_in * taps).enumerate() {
            let row = &product[co * taps * self.channels..][..taps * self.channels];
            for (ci, filter) in filters.chunks_exact_mut(taps).enumerate() {
                for (tap, v) in filter.iter_mut().enumerate() {
                    *v = row[tap * self.channels + ci];
                }
            }
        }
        dw
    }

    /// Length of the product [`ConvWeightGradient::weight_gradient`] reads.
    pub(super) fn product_len(&self) -> usize {
        self.g.channels_out * self.row_stride()
    }
}

impl Drop for ConvWeightGradient<'_> {
    fn drop(&mut self) {
        PIXEL_PAIRS.set(std::mem::take(&mut self.words));
    }
}

#[derive(Clone, Copy)]
struct SendWords(*mut u32);
// SAFETY: the tasks sharing it write disjoint words of the buffer.
unsafe impl Send for SendWords {}
unsafe impl Sync for SendWords {}

/// Writes `values` as bf16 into row `r` of packed left tiles at depth positions `depth..`
/// (tile `d / 32`, lane `d % 32`).
///
/// # Safety
/// AVX512-BF16 must be available; `tiles` must hold the steps of every position.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn store_run(values: &[f32], depth: usize, r: usize, tiles: &mut [u16]) {
    use std::arch::x86_64::*;
    let mut done = 0;
    while done < values.len() {
        let d = depth + done;
        let lane = d % DEPTH;
        let n = (DEPTH - lane).min(values.len() - done).min(EDGE);
        let at = (d / DEPTH) * TILE + r * DEPTH + lane;
        assert!(at + n <= tiles.len(), "the run lies inside the tiles");
        // SAFETY: the load reads `n` values of `values`; the masked store writes `n` values
        // from `at`, inside `tiles` (asserted).
        unsafe {
            let half = _mm512_cvtneps_pbh(load_up_to(&values[done..], n));
            let bits: __m256i = std::mem::transmute(half);
            _mm256_mask_storeu_epi16(tiles.as_mut_ptr().add(at).cast(), lanes(n), bits);
        }
        done += n;
    }
}

/// Converts the 32 values of `run` to 16 bf16 pairs and writes the first `count` pairs to
/// `out`, `stride` words apart.
///
/// # Safety
/// AVX512-BF16 must be available and `out + i·stride` writable for `i < count`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn scatter_pairs(run: &[f32], out: *mut u32, stride: usize, count: usize) {
    use std::arch::x86_64::*;
    let index = lane_offsets(stride);
    // SAFETY: `run` holds 32 values; the caller vouches for the written words.
    unsafe {
        let words = bf16_in_order(load_up_to(run, EDGE), load_up_to(&run[EDGE..], EDGE));
        _mm512_mask_i32scatter_epi32::<4>(out.cast(), lanes(count), index, words);
    }
}

impl Columns for ConvWeightGradient<'_> {
    fn depth(&self) -> usize {
        self.g.batch * self.image_depth
    }

    fn tiles(&self) -> usize {
        self.g.kernel[0] * self.g.kernel[1] * self.channels / EDGE
    }

    fn destination(&self, tile: usize) -> (usize, usize) {
        (tile * EDGE, EDGE)
    }

    fn row_stride(&self) -> usize {
        self.g.kernel[0] * self.g.kernel[1] * self.channels
    }

    fn in_place(&self) -> Option<InPlace<'_>> {
        let blocks_per_tap = self.channels / EDGE;
        let kw = self.g.kernel[1];
        let parity_words = self.g.batch * self.image_words;
        let origins = (0..self.tiles())
            .map(|tile| {
                let (tap, block) = (tile / blocks_per_tap, tile % blocks_per_tap);
                let shift = (tap / kw) * self.padded_width + tap % kw;
                (shift % 2) * parity_words + (shift / 2) * self.channels + block * EDGE
            })
            .collect();
        let steps_per_image = self.image_depth / DEPTH;
        let steps = (0..self.g.batch * steps_per_image)
            .map(|s| {
                let (b, s) = (s / steps_per_image, s % steps_per_image);
                b * self.image_words + s * (DEPTH / 2) * self.channels
            })
            .collect();
        Some(InPlace {
            words: &self.words,
            origins,
            steps,
            stride_words: self.channels,
        })
    }
}

/// The weight gradient `[C_out, C_in, k_h, k_w]` of a stride-1 convolution of `images` with
/// output gradient `dy`, as one product read in place ([`ConvWeightGradient`]).
pub(super) fn weight_gradient(g: &ConvGeometry, images: &[f32], dy: &[f32]) -> Vec<f32> {
    let columns = ConvWeightGradient::new(g, images);
    let packed = columns.packed_output_gradient(dy);
    let mut product = vec![0.0f32; columns.product_len()];
    matmul_packed(
        &mut product,
        &packed,
        g.channels_out,
        &columns,
        Store::OVERWRITE,
        true,
    );
    ConvWeightGradient::recycle(packed);
    columns.weight_gradient(&product)
}

/// Where column tile `tile` of a batch's convolution lands in `[B, C_out, H_out·W_out]`: 16
/// output pixels of one row of one image (fewer at the row's end).
fn conv_destination(g: &ConvGeometry, tiles_per_row: usize, tile: usize) -> (usize, usize) {
    let per_image = g.out_height() * tiles_per_row;
    let (image, tile) = (tile / per_image, tile % per_image);
    let (oy, ox) = (tile / tiles_per_row, (tile % tiles_per_row) * EDGE);
    let (width, plane) = (g.out_width(), g.out_height() * g.out_width());
    (
        image * g.channels_out * plane + oy * width + ox,
        (width - ox).min(EDGE),
    )
}

/// What happens to each sum of a product as it is stored into the destination.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Store<'a> {
    /// Add to what the destination holds instead of overwriting it.
    pub accumulate: bool,
    /// Add `bias[row]` to every sum of a row (a convolution's bias per output channel).
    pub bias: Option<&'a [f32]>,
    /// Add `map[i % map.len()]` to the sum stored at destination index `i`: a map per image
    /// (`[C_out, H_out·W_out]`) added to every image of a batch's convolution.
    pub map: Option<&'a [f32]>,
    /// Set negative results to 0 (after the bias and the map).
    pub relu: bool,
}

impl Store<'_> {
    pub(super) const OVERWRITE: Store<'static> = Store {
        accumulate: false,
        bias: None,
        map: None,
        relu: false,
    };

    pub(super) fn accumulating(accumulate: bool) -> Store<'static> {
        Store {
            accumulate,
            ..Store::OVERWRITE
        }
    }

    /// Stores the first `rows` rows and `cols` columns of an accumulator tile, product rows
    /// `first_row..`, row `r` at `dst[(first_row + r) * stride + first..]`: one call per tile, its
    /// rows inlined (a call per row cost a tenth of a single face's time).
    ///
    /// # Safety
    /// As for [`Store::row`], for every row.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile(
        &self,
        dst: *mut f32,
        first_row: usize,
        rows: usize,
        first: usize,
        cols: usize,
        stride: usize,
        tile: &[f32; EDGE * EDGE],
    ) {
        for r in 0..rows {
            let row = first_row + r;
            // SAFETY: the caller's bound, row by row.
            unsafe { self.row(dst, row * stride + first, &tile[r * EDGE..][..cols], row) };
        }
    }

    /// Stores one row of sums `src` (at most 16, product row `row`) at `dst[index..]`, as one
    /// masked vector.
    ///
    /// # Safety
    /// AVX-512 is available; `dst + index` is valid for `src.len()` writes, and for as many
    /// reads when accumulating (only then must it hold initialised values).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn row(&self, dst: *mut f32, index: usize, src: &[f32], row: usize) {
        use std::arch::x86_64::*;
        assert!(src.len() <= EDGE, "one tile row");
        let mask = lanes(src.len()) as __mmask16;
        // SAFETY: the masked lanes lie inside `src`, inside `dst` (the caller's bound) and
        // inside the map (a tile row never crosses an image's row).
        unsafe {
            let out = dst.add(index);
            let mut v = _mm512_maskz_loadu_ps(mask, src.as_ptr());
            if self.accumulate {
                v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out), v);
            }
            if let Some(bias) = self.bias {
                v = _mm512_add_ps(v, _mm512_set1_ps(bias[row]));
            }
            if let Some(map) = self.map {
                let at = &map[index % map.len()..][..src.len()];
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, at.as_ptr()));
            }
            if self.relu {
                v = _mm512_max_ps(v, _mm512_setzero_ps());
            }
            _mm512_mask_storeu_ps(out, mask, v);
        }
    }
}

/// `dst = lhs · rhs` (or `+=` with `accumulate`), `dst` row-major `m x n`, operands rounded to
/// bf16. Only call when [`available`] is true. With `parallel`, column blocks are shared among
/// rayon's threads.
pub(super) fn matmul(
    dst: &mut [f32],
    lhs: &[f32],
    lhs_shape: Mat,
    rhs: &[f32],
    rhs_shape: Mat,
    accumulate: bool,
    parallel: bool,
) {
    let rhs = Strided {
        data: rhs,
        shape: rhs_shape,
    };
    let store = Store::accumulating(accumulate);
    matmul_columns(dst, lhs, lhs_shape, &rhs, store, parallel);
}

/// `dst = lhs · columns`, stored as `store` says, each row `columns.row_stride()` after the one
/// before.
pub(super) fn matmul_columns(
    dst: &mut [f32],
    lhs: &[f32],
    lhs_shape: Mat,
    columns: &impl Columns,
    store: Store,
    parallel: bool,
) {
    let (m, k) = (lhs_shape.rows, lhs_shape.cols);
    assert!(available(), "AMX tiles are available");
    assert_eq!(columns.depth(), k, "inner dimensions agree");
    // This thread's buffer, kept between calls: a fresh one per call (megabytes for a weight
    // gradient's column matrix) cost more in page faults than the product.
    let mut lhs_buffer = LHS_PACKED.take();
    let len = blocks(m, EDGE) * blocks(k, DEPTH) * TILE;
    if lhs_buffer.len() < len {
        lhs_buffer.resize(len, 0);
    }
    pack_lhs(lhs, lhs_shape, &mut lhs_buffer[..len], parallel);
    matmul_packed(dst, &lhs_buffer[..len], m, columns, store, parallel);
    LHS_PACKED.set(lhs_buffer);
}

/// [`matmul_columns`] with the left operand (`m` rows) already packed into row tiles as
/// `pack_lhs` packs it.
pub(super) fn matmul_packed(
    dst: &mut [f32],
    lhs_packed: &[u16],
    m: usize,
    columns: &impl Columns,
    store: Store,
    parallel: bool,
) {
    // SAFETY: `dst` is initialised, valid for reads and writes over its length.
    unsafe {
        matmul_packed_raw(
            dst.as_mut_ptr(),
            dst.len(),
            lhs_packed,
            m,
            columns,
            store,
            parallel,
        )
    }
}

/// [`matmul_packed`] into a fresh buffer of `len` values (`store` must overwrite, not
/// accumulate), which `columns`' tiles must cover, as a convolution's cover its output: every
/// value is written once by the product, none zeroed first.
pub(super) fn matmul_packed_new(
    len: usize,
    lhs_packed: &[u16],
    m: usize,
    columns: &impl Columns,
    store: Store,
    parallel: bool,
) -> Vec<f32> {
    assert!(!store.accumulate, "a fresh buffer has nothing to add to");
    // The column tiles are disjoint, so if their columns add up to the buffer, every value of
    // every row is written.
    let per_row: usize = (0..columns.tiles()).map(|t| columns.destination(t).1).sum();
    assert_eq!(m * per_row, len, "the product writes every value");
    let mut dst = Vec::<f32>::with_capacity(len);
    let spare = dst.spare_capacity_mut();
    // SAFETY: `spare` is valid for `len` writes; without accumulating nothing is read.
    unsafe {
        matmul_packed_raw(
            spare.as_mut_ptr().cast(),
            len,
            lhs_packed,
            m,
            columns,
            store,
            parallel,
        )
    };
    // SAFETY: every value was written (checked above).
    unsafe { dst.set_len(len) };
    dst
}

/// # Safety
/// `dst` is valid for writes of `len` values (and reads, initialised, when accumulating).
unsafe fn matmul_packed_raw(
    dst: *mut f32,
    len: usize,
    lhs_packed: &[u16],
    m: usize,
    columns: &impl Columns,
    store: Store,
    parallel: bool,
) {
    let stride = columns.row_stride();
    assert!(available(), "AMX tiles are available");
    let depth_steps = blocks(columns.depth(), DEPTH);
    assert_eq!(
        lhs_packed.len(),
        blocks(m, EDGE) * depth_steps * TILE,
        "left tiles for every row and step"
    );
    if m == 0 || columns.tiles() == 0 {
        return;
    }
    if let Some(bias) = store.bias {
        assert!(bias.len() >= m, "a bias per row");
    }
    for tile in 0..columns.tiles() {
        let (first, count) = columns.destination(tile);
        assert!(
            count <= EDGE && count <= stride && first + (m - 1) * stride + count <= len,
            "tile columns inside the destination"
        );
    }
    let (row_tiles, col_tiles) = (blocks(m, EDGE), columns.tiles());
    let per_tile_block = depth_steps * TILE;
    let words_per_tile_block = per_tile_block / 2;
    let in_place = columns.in_place();
    if let Some(p) = &in_place {
        assert_eq!(p.steps.len(), depth_steps, "one offset per depth step");
        assert_eq!(p.origins.len(), col_tiles, "one origin per column tile");
        let last_step = p.steps.iter().max().copied().unwrap_or(0);
        for &origin in &p.origins {
            assert!(
                origin + last_step + (EDGE - 1) * p.stride_words + EDGE <= p.words.len(),
                "in-place tiles inside their buffer"
            );
        }
    }
    // Step offsets in bf16 units: packed tiles follow each other (rows 64 bytes apart); tiles
    // in place are where their words are.
    let (step_offsets, rhs_stride): (Vec<usize>, usize) = match &in_place {
        Some(p) => (p.steps.iter().map(|&w| 2 * w).collect(), p.stride_words * 4),
        None => ((0..depth_steps).map(|s| s * TILE).collect(), ROW_BYTES),
    };
    let rhs_steps = RhsSteps {
        steps: &step_offsets,
        stride: rhs_stride,
    };
    let per_job = if in_place.is_some() {
        TILES_PER_JOB_IN_PLACE
    } else {
        TILES_PER_JOB
    };

    // Writes accumulator tile (row tile, column tile) into `dst`.
    let write = |dst: *mut f32, row_tile: usize, col_tile: usize, tile: &[f32; EDGE * EDGE]| {
        let rows = (m - row_tile * EDGE).min(EDGE);
        let (first, cols) = columns.destination(col_tile);
        // SAFETY: AMX implies AVX-512; rows `16 row_tile..` < m and the tile's columns lie
        // inside `dst` in every row (checked above); jobs write disjoint column tiles.
        unsafe { store.tile(dst, row_tile * EDGE, rows, first, cols, stride, tile) };
    };
    let dst_ptr = SendPtr(dst);

    // Job `j`: pack column tiles `8j..` (128 columns) and multiply every row by them.
    let job = |j: usize| {
        let dst = dst_ptr;
        let first_tile = j * per_job;
        let tile_count = (col_tiles - first_tile).min(per_job);
        let mut block_buffer = RHS_BLOCK.take();
        if in_place.is_none() {
            block_buffer.resize(tile_count * words_per_tile_block, 0);
            columns.pack(first_tile, &mut block_buffer);
        }
        configure_tiles();
        let mut out = [[0.0f32; EDGE * EDGE]; 4];
        for col_pair in 0..tile_count.div_ceil(2) {
            let t = 2 * col_pair;
            let two_cols = t + 1 < tile_count;
            let rhs_tile = |t: usize| match &in_place {
                Some(p) => p.words[p.origins[first_tile + t]..].as_ptr() as *const u16,
                None => block_buffer[t * words_per_tile_block..].as_ptr() as *const u16,
            };
            let (rhs, rhs_next) = (rhs_tile(t), rhs_tile(if two_cols { t + 1 } else { t }));
            for row_pair in 0..row_tiles.div_ceil(2) {
                let first_row = 2 * row_pair;
                let two_rows = first_row + 1 < row_tiles;
                let lhs_tile = |r: usize| lhs_packed[r * per_tile_block..].as_ptr();
                let (lhs, lhs_next) = (
                    lhs_tile(first_row),
                    lhs_tile(if two_rows { first_row + 1 } else { first_row }),
                );
                let kernel: BlockKernel = match (two_rows, two_cols) {
                    (true, true) => block::<true, true>,
                    (true, false) => block::<true, false>,
                    (false, true) => block::<false, true>,
                    (false, false) => block::<false, false>,
                };
                // SAFETY: the left pointers address `depth_steps` packed tiles; the right ones,
                // a tile at every step offset (packed, or in place: checked above).
                unsafe { kernel(lhs, lhs_next, rhs, rhs_next, rhs_steps, &mut out) };
                let col_tile = first_tile + t;
                write(dst.0, first_row, col_tile, &out[0]);
                if two_cols {
                    write(dst.0, first_row, col_tile + 1, &out[1]);
                }
                if two_rows {
                    write(dst.0, first_row + 1, col_tile, &out[2]);
                }
                if two_rows && two_cols {
                    write(dst.0, first_row + 1, col_tile + 1, &out[3]);
                }
            }
        }
        // SAFETY: releases this thread's tile state (configured above).
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
        RHS_BLOCK.set(block_buffer);
    };
    let jobs = col_tiles.div_ceil(per_job);
    if parallel && jobs > 1 {
        (0..jobs).into_par_iter().for_each(job);
    } else {
        (0..jobs).for_each(job);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the jobs sharing it write disjoint parts of the buffer.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

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

    fn reference(a: &[f32], sa: Mat, b: &[f32], sb: Mat, round: bool) -> Vec<f32> {
        let r = |v: f32| {
            if round {
                f32::from_bits((to_bf16(v) as u32) << 16)
            } else {
                v
            }
        };
        let mut out = vec![0.0f32; sa.rows * sb.cols];
        for i in 0..sa.rows {
            for j in 0..sb.cols {
                out[i * sb.cols + j] = (0..sa.cols)
                    .map(|p| r(at(a, sa, i, p)) as f64 * r(at(b, sb, p, j)) as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert!(f32::from_bits((to_bf16(f32::NAN) as u32) << 16).is_nan());
    }

    #[test]
    fn products_equal_the_rounded_operands_product() {
        if !available() {
            eprintln!("no AMX on this CPU: skipped");
            return;
        }
        // Odd sizes exercise partial tiles in every dimension, transposed operands the strided
        // packing, and both thread modes the job split.
        for &(m, k, n) in &[
            (1, 1, 1),
            (16, 32, 16),
            (17, 33, 47),
            (70, 9, 300),
            (5, 200, 3),
        ] {
            for transposed in [false, true] {
                let (a, b) = (values(m * k, 1 + m as u32), values(k * n, 7 + n as u32));
                let sa = if transposed {
                    Mat::row_major(k, m).transposed()
                } else {
                    Mat::row_major(m, k)
                };
                let sb = if transposed {
                    Mat::row_major(n, k).transposed()
                } else {
                    Mat::row_major(k, n)
                };
                let expected = reference(&a, sa, &b, sb, true);
                let exact = reference(&a, sa, &b, sb, false);
                for parallel in [false, true] {
                    let mut out = vec![1.0f32; m * n];
                    matmul(&mut out, &a, sa, &b, sb, true, parallel);
                    for ((o, e), x) in out.iter().zip(&expected).zip(&exact) {
                        assert!(
                            (o - 1.0 - e).abs() <= 1e-4 * (1.0 + e.abs()),
                            "{m}x{k}x{n}: {o} vs 1 + {e}"
                        );
                        // And within bf16's rounding of the exact product.
                        assert!((o - 1.0 - x).abs() <= 0.02 * (k as f32).sqrt() + 1e-3);
                    }
                }
            }
        }
    }

    #[test]
    #[ignore = "a throughput measurement, not a check"]
    fn throughput_against_gemm() {
        for &(m, k, n) in &[
            (16, 144, 12544),
            (32, 288, 3136),
            (64, 576, 784),
            (128, 1152, 196),
            (256, 2304, 784),
            (144, 16, 12544),
            (16, 12544, 144),
        ] {
            let (a, b) = (values(m * k, 3), values(k * n, 5));
            let (sa, sb) = (Mat::row_major(m, k), Mat::row_major(k, n));
            let mut out = vec![0.0f32; m * n];
            let flops = 2.0 * (m * k * n) as f64;
            for parallel in [false, true] {
                let reps = (2e9 / flops).ceil() as usize;
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    matmul(&mut out, &a, sa, &b, sb, false, parallel);
                }
                let amx = flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9;
                let par = if parallel {
                    gemm::Parallelism::Rayon(0)
                } else {
                    gemm::Parallelism::None
                };
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    super::super::conv::matmul(&mut out, &a, sa, &b, sb, false, par);
                }
                let f32s = flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9;
                eprintln!(
                    "{m}x{k}x{n} parallel={parallel}: amx {amx:.0} GFLOP/s, gemm f32 {f32s:.0}"
                );
            }
        }
    }

    #[test]
    #[ignore = "a throughput measurement, not a check"]
    fn packing_cost() {
        for &(m, k, n) in &[(16, 144, 12544), (256, 2304, 784)] {
            let (a, b) = (values(m * k, 3), values(k * n, 5));
            let (sa, sb) = (Mat::row_major(m, k), Mat::row_major(k, n));
            let (rt, ct, ds) = (blocks(m, EDGE), blocks(n, EDGE), blocks(k, DEPTH));
            let mut lp = vec![0u16; rt * ds * TILE];
            let mut rp = vec![0u32; ct * ds * TILE / 2];
            let t = std::time::Instant::now();
            for _ in 0..20 {
                pack_lhs(&a, sa, &mut lp, false);
            }
            let tl = t.elapsed().as_secs_f64() / 20.0;
            let t = std::time::Instant::now();
            for _ in 0..20 {
                pack_rhs(&b, sb, 0, &mut rp);
            }
            let tr = t.elapsed().as_secs_f64() / 20.0;
            let mut out = vec![0.0f32; m * n];
            let t = std::time::Instant::now();
            for _ in 0..20 {
                matmul(&mut out, &a, sa, &b, sb, false, false);
            }
            let tt = t.elapsed().as_secs_f64() / 20.0;
            eprintln!(
                "{m}x{k}x{n}: lhs {:.3} ms rhs {:.3} ms total {:.3} ms",
                tl * 1e3,
                tr * 1e3,
                tt * 1e3
            );
        }
    }

    /// Columns that hide their in-place tiles, so the product packs them.
    struct Packed<'a, C: Columns>(&'a C);

    impl<C: Columns> Columns for Packed<'_, C> {
        fn depth(&self) -> usize {
            self.0.depth()
        }
        fn tiles(&self) -> usize {
            self.0.tiles()
        }
        fn pack(&self, first_tile: usize, tiles: &mut [u32]) {
            self.0.pack(first_tile, tiles)
        }
        fn destination(&self, tile: usize) -> (usize, usize) {
            self.0.destination(tile)
        }
        fn row_stride(&self) -> usize {
            self.0.row_stride()
        }
    }

    #[test]
    fn convolution_columns_equal_the_rounded_convolution() {
        if !available() {
            eprintln!("no AMX on this CPU: skipped");
            return;
        }
        // Widths below, at and above a tile; stride 2; 1x1; padding wider than the kernel's half.
        let shapes = [
            (3, 5, 9, 7, [3, 3], [1, 1], [1, 1]),
            (2, 16, 20, 17, [3, 3], [2, 2], [1, 1]),
            (17, 33, 6, 40, [3, 3], [1, 1], [1, 1]),
            (5, 20, 11, 11, [1, 1], [1, 1], [0, 0]),
            (4, 8, 9, 9, [5, 5], [1, 1], [3, 3]),
            // Channel blocks: one exactly, a partial second; a deep 14x14 level.
            (32, 16, 7, 18, [3, 3], [1, 1], [1, 1]),
            (40, 33, 14, 14, [3, 3], [1, 1], [1, 1]),
            (48, 20, 5, 5, [1, 1], [1, 1], [0, 0]),
        ];
        // A batch of two images: one product writes both outputs, `[B, C_out, H_out·W_out]`.
        let batch = 2;
        for (i, &(cin, cout, h, w, kernel, stride, padding)) in shapes.iter().enumerate() {
            let g = ConvGeometry {
                batch,
                channels_in: cin,
                channels_out: cout,
                height: h,
                width: w,
                kernel,
                stride,
                padding,
            };
            let round = |v: f32| f32::from_bits((to_bf16(v) as u32) << 16);
            let x = values(batch * cin * h * w, 11 + i as u32);
            let weight = values(cout * cin * kernel[0] * kernel[1], 13 + i as u32);
            let (oh, ow) = (g.out_height(), g.out_width());
            let mut expected = vec![0.0f64; batch * cout * oh * ow];
            for b in 0..batch {
                let image = &x[b * cin * h * w..];
                for co in 0..cout {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut sum = 0.0f64;
                            for ci in 0..cin {
                                for ky in 0..kernel[0] {
                                    for kx in 0..kernel[1] {
                                        let iy =
                                            (oy * stride[0] + ky) as isize - padding[0] as isize;
                                        let ix =
                                            (ox * stride[1] + kx) as isize - padding[1] as isize;
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                                        {
                                            continue;
                                        }
                                        let xv = image[(ci * h + iy as usize) * w + ix as usize];
                                        let wv = weight
                                            [((co * cin + ci) * kernel[0] + ky) * kernel[1] + kx];
                                        sum += round(xv) as f64 * round(wv) as f64;
                                    }
                                }
                            }
                            expected[((b * cout + co) * oh + oy) * ow + ox] = sum;
                        }
                    }
                }
            }
            let k = cin * kernel[0] * kernel[1];
            let bias = values(cout, 17 + i as u32);
            // One image's output: added to both images of the batch.
            let map = values(cout * oh * ow, 19 + i as u32);
            let check = |out: &[f32], store: Store, how: &str| {
                for (j, (o, e)) in out.iter().zip(&expected).enumerate() {
                    let co = j / (oh * ow) % cout;
                    let e = e + store.bias.map_or(0.0, |b| b[co] as f64);
                    let e = e + store.map.map_or(0.0, |m| m[j % m.len()] as f64);
                    let e = if store.relu { e.max(0.0) } else { e };
                    assert!(
                        (*o as f64 - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "shape {i}, {how}, {store:?}: {o} vs {e}"
                    );
                }
            };
            let stores = [
                (false, Store::OVERWRITE),
                (true, Store::OVERWRITE),
                (
                    true,
                    Store {
                        relu: true,
                        ..Store::OVERWRITE
                    },
                ),
                (
                    false,
                    Store {
                        relu: true,
                        bias: Some(&bias),
                        ..Store::OVERWRITE
                    },
                ),
                (
                    true,
                    Store {
                        bias: Some(&bias),
                        map: Some(&map),
                        ..Store::OVERWRITE
                    },
                ),
                (
                    true,
                    Store {
                        bias: Some(&bias),
                        ..Store::OVERWRITE
                    },
                ),
            ];
            for (parallel, store) in stores {
                let mut out = vec![f32::NAN; batch * cout * oh * ow];
                let columns = ConvColumns::new(&g, &x);
                let w = Mat::row_major(cout, k);
                matmul_columns(&mut out, &weight, w, &columns, store, parallel);
                check(&out, store, "packed from the images");
                if stride == [1, 1] {
                    // Read in place, and the same tiles packed.
                    let columns = ConvInPlace::new(&g, &x);
                    let weights = in_place_weights(&g, &weight);
                    for packed in [false, true] {
                        let mut out = vec![f32::NAN; batch * cout * oh * ow];
                        if packed {
                            let copied = Packed(&columns);
                            matmul_packed(&mut out, &weights, cout, &copied, store, parallel);
                        } else {
                            matmul_packed(&mut out, &weights, cout, &columns, store, parallel);
                        }
                        let how = if packed {
                            "in place, packed"
                        } else {
                            "in place"
                        };
                        check(&out, store, how);
                    }
                }
            }
        }
    }
}
