"""A disk-tier block file mapped read-only, so that a restored cache's pages are the file's own pages.

Why it stays safe when the file does not:
- deleted (gc, the LRU budget, `workbench cache clear` in another process): the mapping and the open
  file descriptor keep the inode alive, so the pages stay readable and unchanged until we let go;
- truncated or rewritten in place by another process: `intact()` sees the file's size or mtime
  differ from what was verified, and the engine, which checks its pages before and after every pass,
  recomputes those positions; touching a page past the new end of the file would raise SIGBUS, which
  the engine's guard over the mapping (engine/backends/kernels_paged.c) turns into a page of zeros
  that is never used;
- verification reads the file with pread, not through the mapping: a truncation during it is a short
  read (the block is dropped), never a fault.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from pathlib import Path

import numpy as np

from kvstore.format import (
    HEADER_LEN,
    BlockFormatError,
    DecodedBlock,
    checksum_of,
    new_checksum,
    parse_header,
    views,
)
from kvstore.space import BlockSpace

_CHUNK = 1 << 20  # verification reads in chunks of this size into one reused buffer (stays in cache)
_scratch = threading.local()


class MappedBlock:
    def __init__(self, path: Path) -> None:
        """Open and map `path` (FileNotFoundError when it is gone)."""
        self.path = path
        fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
            if self.size == 0:
                raise BlockFormatError("empty block file")
            # MAP_POPULATE: page tables filled now (reading the file if the page cache lost it), so the
            # first attention over the pages does not take one fault per 4 KiB
            self.buffer = mmap.mmap(fd, self.size, mmap.MAP_SHARED | mmap.MAP_POPULATE, mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        weakref.finalize(self, os.close, fd)
        self.mapping = (np.frombuffer(self.buffer, np.uint8).ctypes.data, self.size)  # for the engine's guard

    def intact(self) -> bool:
        """Whether the file still has the size and mtime it had when it was mapped and verified."""
        try:
            st = os.fstat(self.fd)
        except OSError:
            return False
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns

    def verified(self, key: bytes, space: BlockSpace, kind: int) -> DecodedBlock:
        """The block's arrays over the mapping, once its header and checksum are checked."""
        head = os.pread(self.fd, HEADER_LEN, 0)
        header = parse_header(head, self.size, key, space, kind)
        h = new_checksum(head)
        buf = getattr(_scratch, "buf", None)
        if buf is None:
            buf = _scratch.buf = memoryview(bytearray(_CHUNK))
        pos = HEADER_LEN
        while pos < self.size:
            n = os.preadv(self.fd, [buf[: min(_CHUNK, self.size - pos)]], pos)
            if n <= 0:
                raise BlockFormatError(f"block file truncated while being read ({pos} of {self.size} bytes)")
            h.update(buf[:n])
            pos += n
        if h.digest() != checksum_of(head):
            raise BlockFormatError("checksum mismatch")
        if not self.intact():
            raise BlockFormatError("block file changed while being read")
        return views(self.buffer, header)
