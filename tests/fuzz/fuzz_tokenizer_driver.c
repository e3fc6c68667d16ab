/* Stand-alone driver for fuzz_tokenizer.c, for builds without libFuzzer.
 *
 * Seeds: the gpt2 and digits fixtures and two small tokenizer files built
 * here (every Split behaviour, invert, Digits, added tokens with
 * lstrip/rstrip/single_word, NFC, unk, ignore_merges), each followed by a
 * config and a text; and texts alone for the fixture tokenizers.  Then N
 * deterministic mutations: inside the JSON, characters that keep it close to
 * JSON and regex syntax, interesting numbers, cut and copied ranges; inside
 * the text, bit flips, random UTF-8 (valid or not) and copied ranges.  The
 * target aborts on a violation; this driver also fails if a seed does not
 * load or if mutated files never loaded or never failed to.
 *
 *   fuzz_tokenizer_driver [N] [FILE...]     N mutations (default 200000)
 *   fuzz_tokenizer_driver --write-seeds DIR  write the seeds as files */
#include "tests/fuzz/driver_util.h"
#include "engine/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SEEDS 16
#define SEED_CAP (48u << 10)

extern long fuzz_tokenizer_loaded, fuzz_tokenizer_rejected;

typedef struct {
    uint8_t bytes[SEED_CAP];
    size_t len;
} input_t;

static input_t g_seeds[MAX_SEEDS];
static int g_n_seeds;
static uint64_t g_rng = 0x746f6b66757a7a31ull;

static uint64_t rnd(void) { return fuzz_splitmix64(&g_rng); }

static void put(input_t *in, const void *p, size_t n)
{
    if (n > SEED_CAP - in->len)
        n = SEED_CAP - in->len;
    memcpy(in->bytes + in->len, p, n);
    in->len += n;
}

static void put_file(input_t *in, const char *path)
{
    static char buf[SEED_CAP];
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(buf, 1, sizeof(buf), f) : 0;
    if (f)
        fclose(f);
    put(in, buf, n);
}

/* The 256 byte-level characters as a vocabulary (ids 0..255), then extra
 * tokens from 256 on. */
static void put_byte_vocab(input_t *in, const char *const *extra, int n_extra)
{
    char tok[16];
    put(in, "{", 1);
    for (int b = 0; b < 256; b++) {
        uint32_t cp = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174 ? (uint32_t)b
                      : b <= 32                                                  ? 256u + b
                      : b <= 160                                                 ? b + 162u
                                                                                 : 323u;
        int n = 0;
        if (cp == '"' || cp == '\\')
            tok[n++] = '\\';
        if (cp < 0x80) {
            tok[n++] = (char)cp;
        } else {
            tok[n++] = (char)(0xc0 | cp >> 6);
            tok[n++] = (char)(0x80 | (cp & 0x3f));
        }
        char item[32];
        int m = snprintf(item, sizeof(item), "\"%.*s\":%d,", n, tok, b);
        put(in, item, (size_t)m);
    }
    for (int i = 0; i < n_extra; i++) {
        char item[64];
        int m = snprintf(item, sizeof(item), "\"%s\":%d%s", extra[i], 256 + i,
                         i + 1 < n_extra ? "," : "}");
        put(in, item, (size_t)m);
    }
}

static const char TEXT[] = "def add(a, b):\n    return a + b  # it's 42\n\n<|endoftext|>"
                           "<fim_prefix>x<fim_suffix>y<fim_middle> caf\xc3\xa9 e\xcc\x81 "
                           "\xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x9a\x80 \xd9\xa3\xc2\xbd \xe2\x80\x83  end";

static void seed_fixture(const char *name, const char *config)
{
    input_t *in = &g_seeds[g_n_seeds++];
    char path[512];
    snprintf(path, sizeof(path), "%s/tokenizer/%s", KVT_FIXTURES, name);
    put(in, "\0", 1);
    put_file(in, path);
    put(in, "\0", 1);
    put(in, config, strlen(config));
    put(in, "\0", 1);
    put(in, TEXT, sizeof(TEXT) - 1);
}

/* Small files that reach what the fixtures do not. */
static void seed_handmade(void)
{
    static const char *const extra[] = {"\xc4\xa0\xc4\xa0", "ab", "abc", "<s>"};
    static const char *const tails[] = {
        "\"merges\":[\"\xc4\xa0 \xc4\xa0\",\"a b\",\"ab c\"],\"ignore_merges\":true,"
        "\"unk_token\":\"<s>\",\"fuse_unk\":true},"
        "\"added_tokens\":[{\"id\":259,\"content\":\"<s>\",\"special\":true,\"lstrip\":true,"
        "\"rstrip\":true},{\"id\":260,\"content\":\"word\",\"single_word\":true,"
        "\"normalized\":true},{\"id\":261,\"content\":\"x y\",\"normalized\":false}],"
        "\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"Sequence\","
        "\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+$|^\\\\w|[a-z]*\"},"
        "\"behavior\":\"MergedWithNext\",\"invert\":true},{\"type\":\"Split\",\"pattern\":"
        "{\"String\":\"::\"},\"behavior\":\"Contiguous\"},{\"type\":\"ByteLevel\","
        "\"add_prefix_space\":true,\"use_regex\":true}]},\"decoder\":{\"type\":\"ByteLevel\"}}",
        "\"merges\":[[\"\xc4\xa0\",\"\xc4\xa0\"],[\"a\",\"b\"]]},"
        "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\","
        "\"individual_digits\":false},{\"type\":\"Split\",\"pattern\":{\"Regex\":"
        "\"(?i:'s|'t)|\\\\b\\\\h+|\\\\p{N}{1,3}|(?m:.)\"},\"behavior\":\"MergedWithPrevious\"},"
        "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s\"},\"behavior\":\"Removed\"},"
        "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]},"
        "\"decoder\":{\"type\":\"ByteLevel\"}}",
    };
    for (size_t t = 0; t < sizeof(tails) / sizeof(tails[0]); t++) {
        input_t *in = &g_seeds[g_n_seeds++];
        static const char head[] = "\0{\"model\":{\"type\":\"BPE\",\"vocab\":";
        put(in, head, sizeof(head) - 1);
        put_byte_vocab(in, extra, 4);
        put(in, ",", 1);
        put(in, tails[t], strlen(tails[t]));
        put(in, "\0\0", 2);
        put(in, TEXT, sizeof(TEXT) - 1);
    }
}

static void seed_text(const char *sample)
{
    input_t *in = &g_seeds[g_n_seeds++];
    char path[512];
    snprintf(path, sizeof(path), "%s/tokenizer/samples/%s", KVT_FIXTURES, sample);
    put(in, "\1", 1);
    put_file(in, path);
}

static void build_seeds(void)
{
    seed_fixture("gpt2.tokenizer.json", "");
    seed_fixture("digits.tokenizer.json",
                 "{\"add_bos_token\":true,\"bos_token\":{\"content\":"
                 "\"<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>\"},"
                 "\"eos_token\":\"<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>\"}");
    seed_handmade();
    seed_text("fim.txt");
    seed_text("unicode.txt");
    seed_text("gen_key_vectors.py.txt");
    input_t *in = &g_seeds[g_n_seeds++];
    put(in, "\1", 1);
    put(in, TEXT, sizeof(TEXT) - 1);
}

/* --- mutations --- */

static size_t json_end(const input_t *in)
{
    const uint8_t *nul = in->len > 1 ? memchr(in->bytes + 1, 0, in->len - 1) : NULL;
    return nul ? (size_t)(nul - in->bytes) : in->len;
}

static void insert(input_t *in, size_t at, const void *p, size_t n)
{
    if (n > SEED_CAP - in->len)
        return;
    memmove(in->bytes + at + n, in->bytes + at, in->len - at);
    memcpy(in->bytes + at, p, n);
    in->len += n;
}

static void mutate_json(input_t *in, size_t lo, size_t hi)
{
    static const char alphabet[] = "{}[]\":,0123456789-.eE tnulfrsa\\()|*+?^${}<>";
    static const char *const words[] = {"-1", "4194303", "4194304", "1e9", "0.5", "null", "true",
                                        "\"\"", "[]", "{}", "\"(\"", "\"\\\\p{L}\"", "\"a b\"",
                                        "\"Isolated\"", "\"Removed\"", "\"Sequence\""};
    uint64_t r = rnd();
    size_t at = lo + (size_t)((r >> 8) % (hi - lo + 1));
    size_t span = (size_t)((r >> 32) % 64);
    switch (r % 5) {
    case 0:
        if (at < hi)
            in->bytes[at] = (uint8_t)alphabet[(r >> 40) % (sizeof(alphabet) - 1)];
        break;
    case 1: {
        const char *w = words[(r >> 40) % (sizeof(words) / sizeof(words[0]))];
        insert(in, at, w, strlen(w));
        break;
    }
    case 2: /* cut */
        span = at + span > hi ? hi - at : span;
        memmove(in->bytes + at, in->bytes + at + span, in->len - at - span);
        in->len -= span;
        break;
    case 3: { /* copy a range elsewhere */
        size_t from = lo + (size_t)((r >> 16) % (hi - lo + 1));
        span = from + span > hi ? hi - from : span;
        uint8_t tmp[64];
        memcpy(tmp, in->bytes + from, span);
        insert(in, at, tmp, span);
        break;
    }
    default:
        if (at < hi)
            in->bytes[at] ^= (uint8_t)(1u << ((r >> 40) % 8));
        break;
    }
}

static void mutate_text(input_t *in, size_t lo)
{
    uint64_t r = rnd();
    size_t at = lo + (size_t)((r >> 8) % (in->len - lo + 1));
    switch (r % 4) {
    case 0:
        if (at < in->len)
            in->bytes[at] ^= (uint8_t)(1u << ((r >> 40) % 8));
        break;
    case 1: { /* a code point, sometimes a surrogate or beyond U+10FFFF */
        uint32_t cp = (uint32_t)((r >> 32) % 0x110800);
        uint8_t u[4] = {(uint8_t)(0xf0 | cp >> 18), (uint8_t)(0x80 | (cp >> 12 & 0x3f)),
                        (uint8_t)(0x80 | (cp >> 6 & 0x3f)), (uint8_t)(0x80 | (cp & 0x3f))};
        if (cp < 0x80)
            insert(in, at, (uint8_t[]){(uint8_t)cp}, 1);
        else if (cp < 0x10000)
            insert(in, at, (uint8_t[]){(uint8_t)(0xe0 | cp >> 12), u[2], u[3]}, 3);
        else
            insert(in, at, u, 4);
        break;
    }
    case 2: { /* repeat a range: long pre-tokens */
        size_t span = (size_t)((r >> 32) % 32);
        span = at + span > in->len ? in->len - at : span;
        uint8_t tmp[32];
        memcpy(tmp, in->bytes + at, span);
        for (int k = 0; k < 1 + (int)((r >> 50) % 64); k++)
            insert(in, at, tmp, span);
        break;
    }
    default:
        in->len = at;
        break;
    }
}

static void mutate(input_t *in)
{
    int n = 1 + (int)(rnd() % 3);
    for (int i = 0; i < n && in->len > 0; i++) {
        size_t end = json_end(in);
        if (in->bytes[0] % 2 == 0 && end > 1 && rnd() % 3 != 0)
            mutate_json(in, 1, end);
        else
            mutate_text(in, in->bytes[0] % 2 == 0 ? end : 1);
    }
    if (rnd() % 64 == 0 && in->len > 0)
        in->bytes[0] ^= 1;
}

static int write_seeds(const char *dir)
{
    for (int i = 0; i < g_n_seeds; i++)
        if (fuzz_write_seed(dir, i, g_seeds[i].bytes, g_seeds[i].len))
            return 1;
    return 0;
}

static int run_seeds(void)
{
    for (int i = 0; i < g_n_seeds; i++) {
        long loaded = fuzz_tokenizer_loaded;
        LLVMFuzzerTestOneInput(g_seeds[i].bytes, g_seeds[i].len);
        if (g_seeds[i].bytes[0] % 2 == 0 && fuzz_tokenizer_loaded != loaded + 1) {
            fprintf(stderr, "seed %d does not load\n", i);
            return 1;
        }
    }
    return 0;
}

static int run_mutations(long n)
{
    static input_t in;
    long loaded0 = fuzz_tokenizer_loaded, rejected0 = fuzz_tokenizer_rejected;
    for (long i = 0; i < n; i++) {
        in = g_seeds[rnd() % (uint64_t)g_n_seeds];
        mutate(&in);
        LLVMFuzzerTestOneInput(in.bytes, in.len);
    }
    long loaded = fuzz_tokenizer_loaded - loaded0, rejected = fuzz_tokenizer_rejected - rejected0;
    printf("mutations=%ld files_loaded=%ld files_rejected=%ld\n", n, loaded, rejected);
    if (n >= 1000 && (loaded == 0 || rejected == 0)) {
        fprintf(stderr, "mutated files never loaded, or never failed to\n");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    build_seeds();
    return fuzz_driver_main(argc, argv, write_seeds, run_seeds, run_mutations);
}
