// Commit of accepted drafts: for each target, copy scratch step `a` of the
// request's slot (recurrent state) and its conv window into a destination slot
// (the request's own, or a snapshot slot). One launch for the whole batch
// instead of two copies per request. Copies 16-bit units (every dtype is 2 or 4 bytes).
// Arguments: CommitArgs (args.h).
// grid: (ceil(max(state, conv units) / blockDim.x), targets)
#include "args.h"

extern "C" __global__ void dnk_commit(CommitArgs a) {
    const long long* t = a.targets + 3 * (long long)blockIdx.y;
    const long long su = a.state_units, cu = a.conv_units, D = a.draft;
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long src = t[0] * D + t[1], dst = t[2];
    if (e < su) a.state[dst * su + e] = a.scratch[src * su + e];
    if (e < cu) a.conv[dst * cu + e] = a.windows[src * cu + e];
}
