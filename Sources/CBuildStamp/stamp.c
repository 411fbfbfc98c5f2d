#include "CBuildStamp.h"

// Defined by an object scripts/build compiles and links into the release binary; a plain
// `swift build` links none, and the weak reference is then NULL. A link flag, not a compile
// flag, carries it, so a new commit relinks the binary without recompiling a module.
extern const char etl_job_commit_text[] __attribute__((weak));

const char *etl_job_build_commit(void) {
    return etl_job_commit_text;
}
