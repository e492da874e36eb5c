// Commit of accepted drafts: for each target, copy scratch step `a` of the
// request's slot (recurrent state) and its conv window into a destination slot
// (the request's own, or a snapshot slot). One launch for the whole batch
// instead of two copies per request. Copies 16-bit units (every dtype is 2 or 4 bytes).
// p: 0 scratch of this layer [rows][D][state], 1 recurrent state of this layer
//    [rows][state], 2 conv windows of this layer [rows][D][conv], 3 conv state
//    of this layer [rows][conv], 4 targets (3 x i64: slot, accepted step, destination slot)
// n: 0 targets, 1 state units, 2 conv units, 3 D
// grid: (ceil(max(state, conv units) / blockDim.x), targets)
extern "C" __global__ void dnk_commit(Args a) {
    const long long* t = (const long long*)a.p[4] + 3 * (long long)blockIdx.y;
    const long long su = a.n[1], cu = a.n[2], D = a.n[3];
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long src = t[0] * D + t[1], dst = t[2];
    if (e < su) ((unsigned short*)a.p[1])[dst * su + e] = ((const unsigned short*)a.p[0])[src * su + e];
    if (e < cu) ((unsigned short*)a.p[3])[dst * cu + e] = ((const unsigned short*)a.p[2])[src * cu + e];
}
