/* Pieces shared by the deterministic fuzz drivers (fuzz_driver.c,
 * fuzz_msg_driver.c): writing a seed corpus and replaying one input file
 * through the target.  Header-only: each driver is one executable. */
#ifndef KVT_TESTS_FUZZ_DRIVER_UTIL_H
#define KVT_TESTS_FUZZ_DRIVER_UTIL_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* splitmix64: the drivers' deterministic mutation stream. */
static inline uint64_t fuzz_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* dir/seed_NN.bin; 0 on success, 1 (with a message) on failure. */
static inline int fuzz_write_seed(const char *dir, int i, const uint8_t *bytes, size_t len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/seed_%02d.bin", dir, i);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(bytes, 1, len, f) != len) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        if (f)
            fclose(f);
        return 1;
    }
    fclose(f);
    return 0;
}

/* Run the target on the first 64 KiB of a file. */
static inline int fuzz_run_file(const char *path)
{
    static uint8_t buf[1 << 16];
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    return 0;
}

/* The drivers' shared main: `DRIVER --write-seeds DIR` writes the corpus;
 * `DRIVER [N] [FILE...]` checks the seeds, replays each FILE, then runs N
 * deterministic mutations (default 200000). */
static inline int fuzz_driver_main(int argc, char **argv, int (*write_seeds)(const char *),
                                   int (*run_seeds)(void), int (*run_mutations)(long))
{
    long n = 200000;
    int a = 1;
    if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0)
        return write_seeds(argv[2]);
    if (a < argc) {
        char *end;
        long v = strtol(argv[a], &end, 10);
        if (*argv[a] && !*end && v >= 0) {
            n = v;
            a++;
        }
    }
    if (run_seeds() != 0)
        return 1;
    for (; a < argc; a++)
        if (fuzz_run_file(argv[a]) != 0)
            return 1;
    return run_mutations(n);
}

#endif
