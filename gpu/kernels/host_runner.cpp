// The host build of the kernels (GANG_HOST_BUILD): the thread index each call sees.
// gang-gpu's host executor sets it, then calls the kernel, once per thread.
static thread_local long long current_thread = 0;

extern "C" long long gang_host_thread(void) { return current_thread; }
extern "C" void gang_host_set_thread(long long i) { current_thread = i; }
