// One allocator setting for every Ferry program (called first thing in main).
#pragma once

#include <malloc.h>

namespace ferry {

// Keeps glibc from handing freed memory back to the kernel and faulting it in
// again. A program that moves chunk-sized buffers (1 MiB capnp messages, read
// and compress buffers) would otherwise mmap and zero fresh pages for each
// one: measured at 1-2 s of system time per GiB through the repository
// service; the coordinator's scheduler churned small objects the same way.
// The caps: freed memory above 64 MiB is trimmed, and only allocations over
// 32 MiB (past the largest chunk) get a mapping of their own.
inline void KeepFreedMemory() {
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
}

}  // namespace ferry
