/* NF4 dequantization for lego-peft: packed 4-bit codes -> float32, bfloat16 or float16.
 *
 * out[i] = round_to_dtype(code[nibble(start + i)] * scales[(start + i) / block_size])
 *
 * for i in [0, count): the product in float32, rounded once (to nearest even) to the output
 * type, as bitsandbytes' dequantize_4bit and lego-peft's PyTorch path compute it. Two codes
 * share a byte, the first value in the high nibble. `start` is a multiple of `block_size`
 * and `block_size` a multiple of 32 (bitsandbytes' block sizes are 32 ... 4096), so every
 * group of 32 values (16 bytes) has one scale.
 *
 * The codes are read once and each output value written once: per 16 bytes, the bytes are
 * widened to 16 lanes, split into high and low nibbles, looked up in the 16-entry codebook
 * with one permute each, interleaved back into value order with two two-source permutes,
 * scaled and stored. One call runs on the calling thread (no OpenMP team of its own, whose
 * waiting threads would compete with PyTorch's for the cores); the Python side splits large
 * outputs into block-aligned ranges and calls it from several threads.
 *
 * Returns 0, or 1 when the arguments are out of range (nothing is written then).
 */
#include <immintrin.h>
#include <stdint.h>

/* The CPU features the Python side checks before loading (lego.peft.native). */
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))

enum { OUT_F32 = 0, OUT_BF16 = 1, OUT_F16 = 2 };

TARGET static inline uint16_t bf16_bits(float value) {
    union { float f; uint32_t u; } bits = { value };
    if ((bits.u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0; /* NaN, as PyTorch converts it */
    return (uint16_t)((bits.u + 0x7fffu + ((bits.u >> 16) & 1u)) >> 16);
}

TARGET static inline void store16(void *out, int64_t at, __m512 values, int dtype) {
    if (dtype == OUT_F32) {
        _mm512_storeu_ps((float *)out + at, values);
    } else if (dtype == OUT_BF16) {
        __m512i bits = _mm512_castps_si512(values);
        __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
        __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
        __m512i high = _mm512_srli_epi32(rounded, 16);
        __mmask16 nan = _mm512_cmp_ps_mask(values, values, _CMP_UNORD_Q);
        high = _mm512_mask_mov_epi32(high, nan, _mm512_set1_epi32(0x7fc0)); /* as PyTorch */
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + at), _mm512_cvtepi32_epi16(high));
    } else {
        __m256i half = _mm512_cvtps_ph(values, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + at), half);
    }
}

TARGET static inline void store1(void *out, int64_t at, float value, int dtype) {
    if (dtype == OUT_F32) {
        ((float *)out)[at] = value;
    } else if (dtype == OUT_BF16) {
        ((uint16_t *)out)[at] = bf16_bits(value);
    } else {
        __m128 one = _mm_set_ss(value);
        ((uint16_t *)out)[at] = (uint16_t)_mm_extract_epi16(
            _mm_cvtps_ph(one, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), 0);
    }
}

TARGET int nf4_dequantize(const uint8_t *packed, const float *scales, const float *code, void *out,
                   int64_t start, int64_t count, int64_t block_size, int dtype) {
    if (count < 0 || start < 0 || block_size < 32 || block_size % 32 != 0 ||
        start % block_size != 0 || dtype < OUT_F32 || dtype > OUT_F16)
        return 1;
    const __m512 table = _mm512_loadu_ps(code);
    const __m512i first_half = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19,
                                                 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second_half = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27,
                                                  12, 28, 13, 29, 14, 30, 15, 31);
    const __m512i low_nibble = _mm512_set1_epi32(15);
    const uint8_t *bytes = packed + start / 2;
    const float *block_scales = scales + start / block_size;
    const int64_t n_blocks = (count + block_size - 1) / block_size;
    for (int64_t block = 0; block < n_blocks; block++) {
        const int64_t first = block * block_size;
        const int64_t last = first + block_size < count ? first + block_size : count;
        const float scale = block_scales[block];
        const __m512 scale16 = _mm512_set1_ps(scale);
        int64_t i = first;
        for (; i + 32 <= last; i += 32) {
            __m512i wide = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(bytes + i / 2)));
            __m512 high = _mm512_permutexvar_ps(_mm512_srli_epi32(wide, 4), table);
            __m512 low = _mm512_permutexvar_ps(_mm512_and_si512(wide, low_nibble), table);
            store16(out, i, _mm512_mul_ps(_mm512_permutex2var_ps(high, first_half, low), scale16),
                    dtype);
            store16(out, i + 16,
                    _mm512_mul_ps(_mm512_permutex2var_ps(high, second_half, low), scale16), dtype);
        }
        for (; i < last; i++) { /* the short last block of a tensor */
            const uint8_t byte = bytes[i / 2];
            const int nibble = (i % 2 == 0) ? (byte >> 4) : (byte & 15);
            store1(out, i, code[nibble] * scale, dtype);
        }
    }
    return 0;
}

/* Double quantization undone: the float32 absmax of each block from its 8-bit code,
 *
 * out[i] = nested_code[codes[i]] * nested_absmax[i / nested_block] + offset
 *
 * with two roundings (a product, then a sum; compiled without contraction into a fused
 * multiply-add), as bitsandbytes computes it. Returns 0, or 1 for a bad nested_block.
 */
TARGET int nf4_scales(const uint8_t *codes, const float *nested_code, const float *nested_absmax,
                      const float *offset, float *out, int64_t n, int64_t nested_block) {
    if (n < 0 || nested_block < 1) return 1;
    const float shift = *offset;
    for (int64_t i = 0; i < n; i++) {
        const float scaled = nested_code[codes[i]] * nested_absmax[i / nested_block];
        out[i] = scaled + shift;
    }
    return 0;
}
