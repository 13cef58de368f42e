/* The libFuzzer entry points every harness in tests/fuzz/ defines. replay.c calls them
 * too, so the harnesses also build without libFuzzer (gcc, check-asan) and replay the
 * corpus as a plain program. */
#ifndef READYD_TESTS_FUZZ_H
#define READYD_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
