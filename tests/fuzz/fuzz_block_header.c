/* Fuzz target for the block header decoder (kvstore/block.h).
 *
 * Whatever the input, decode must not crash or read out of bounds; when it
 * accepts, re-encoding the decoded header must give back exactly the bytes
 * it consumed (a second, differently encoded header for the same fields
 * would let two byte images name one block), the length must be the one the
 * format defines, and the content checks must run on the result.  When it
 * rejects, the output arguments must be untouched.  Any violation aborts.
 *
 * Built two ways: with libFuzzer (clang -fsanitize=fuzzer, KVT_FUZZ_LIBFUZZER
 * defined, adding a mutator that reseals the header checksum so mutations
 * reach the field checks behind it), and with fuzz_driver.c for compilers
 * without libFuzzer. */
#include "kvstore/block.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t fuzz_block_header_reseal(uint8_t *data, size_t size);

/* Rewrite the trailing checksum of the header that data's length field
 * describes, if it fits; returns the header length resealed, or 0. */
size_t fuzz_block_header_reseal(uint8_t *data, size_t size)
{
    if (size < 8)
        return 0;
    size_t hlen = (size_t)data[6] | (size_t)data[7] << 8;
    if (hlen < 16 || hlen > size)
        return 0;
    uint64_t sum = XXH3_64bits(data, hlen - 8);
    for (int i = 0; i < 8; i++)
        data[hlen - 8 + i] = (uint8_t)(sum >> (8 * i));
    return hlen;
}

static void check_accepted(const uint8_t *data, size_t size, const kvt_block_header_t *h,
                           size_t len)
{
    if (len > size || len != kvt_block_header_size(h->layout.block_tokens))
        abort();
    if (kvt_block_layout_check(&h->layout) != KVT_OK ||
        h->payload_len != kvt_block_layout_payload_bytes(&h->layout))
        abort();
    uint8_t buf[KVT_BLOCK_HEADER_MAX];
    size_t len2 = 0;
    if (kvt_block_header_encode(h, buf, sizeof(buf), &len2) != KVT_OK || len2 != len ||
        memcmp(buf, data, len) != 0)
        abort();
    kvt_status_t st = kvt_block_header_check_key(h);
    if (st != KVT_OK && st != KVT_ERR_CORRUPT)
        abort();
    /* The header matches its own identity, and not a different model's. */
    kvt_block_identity_t id = {.layout = h->layout};
    memcpy(id.fingerprint, h->fingerprint, KVT_FINGERPRINT_LEN);
    if (kvt_block_header_check_identity(h, &id) != KVT_OK)
        abort();
    id.fingerprint[0] ^= 1;
    if (kvt_block_header_check_identity(h, &id) != KVT_ERR_MISMATCH)
        abort();
    /* Whatever follows the header plays the payload; only the status varies. */
    st = kvt_block_payload_verify(h, data + len, size - len);
    if (st != KVT_OK && st != KVT_ERR_CORRUPT)
        abort();
    if (st == KVT_OK && size - len != h->payload_len)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static kvt_block_header_t h, before;
    size_t len = (size_t)-1;
    memset(&h, 0xa5, sizeof(h));
    kvt_status_t st = kvt_block_header_decode(data, size, &h, &len);
    if (st == KVT_OK) {
        check_accepted(data, size, &h, len);
        return 0;
    }
    memset(&before, 0xa5, sizeof(before));
    if (len != (size_t)-1 || memcmp(&h, &before, sizeof(h)) != 0)
        abort();
    if (st != KVT_ERR_TRUNCATED && st != KVT_ERR_CORRUPT && st != KVT_ERR_INVALID &&
        st != KVT_ERR_TOO_LARGE)
        abort();
    return 0;
}

#ifdef KVT_FUZZ_LIBFUZZER
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

/* Half of the mutations get a valid header checksum, so the fuzzer explores
 * the field checks instead of stopping at the checksum every time. */
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    size = LLVMFuzzerMutate(data, size, max_size);
    if (seed & 1)
        fuzz_block_header_reseal(data, size);
    return size;
}
#endif
