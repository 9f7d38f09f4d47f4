#ifndef SWITCHBOARD_CLIBFUZZER_H
#define SWITCHBOARD_CLIBFUZZER_H
#include <stddef.h>
#include <stdint.h>
/* libFuzzer's driver (compiler-rt, LLVM >= 13): runs the fuzzing loop with the given callback.
   Declared here because SwiftPM links executables through a renamed entry point (<Module>_main), so the
   targets call the driver themselves instead of using libFuzzer's own main(). */
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
#endif
