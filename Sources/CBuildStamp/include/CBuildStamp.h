#ifndef CBUILDSTAMP_H
#define CBUILDSTAMP_H

/// The commit this binary was built from, as scripts/build links it in
/// ("3f2a9c1d7e4b", "3f2a9c1d7e4b-dirty"), or NULL for a build that did not say (swift build).
const char *etl_job_build_commit(void);

#endif
