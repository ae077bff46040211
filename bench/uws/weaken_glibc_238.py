#!/usr/bin/env python3
"""Marks an ELF object's GLIBC_2.38 version requirement as weak (VER_FLG_WEAK).

The prebuilt uWebSockets.js addon requires GLIBC_2.38 only for __isoc23_strtol,
__isoc23_strtoul and __isoc23_sscanf. With the requirement weak, the dynamic loader accepts the
addon on an older glibc, and glibc_compat.so (preloaded) supplies the three functions.
Usage: weaken_glibc_238.py FILE.node   (edits the file in place; idempotent)
"""
import struct
import sys

VER_FLG_WEAK = 0x2


def main(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            sys.exit(f"{path}: not a 64-bit little-endian ELF file")
        e_shoff, = struct.unpack_from("<Q", data, 0x28)
        e_shentsize, e_shnum = struct.unpack_from("<HH", data, 0x3A)
        sections = []
        for i in range(e_shnum):
            off = e_shoff + i * e_shentsize
            sh_name, sh_type, _flags, _addr, sh_offset, sh_size, sh_link, sh_info = struct.unpack_from(
                "<IIQQQQII", data, off)
            sections.append((sh_type, sh_offset, sh_size, sh_link, sh_info))
        SHT_GNU_VERNEED = 0x6FFFFFFE
        changed = 0
        for sh_type, sh_offset, _size, sh_link, sh_info in sections:
            if sh_type != SHT_GNU_VERNEED:
                continue
            strtab = sections[sh_link][1]
            def name_at(o):
                end = data.index(b"\0", strtab + o)
                return data[strtab + o:end].decode()
            vn = sh_offset
            for _ in range(sh_info):
                _ver, vn_cnt, _file, vn_aux, vn_next = struct.unpack_from("<HHIII", data, vn)
                aux = vn + vn_aux
                for _ in range(vn_cnt):
                    _hash, flags, _other, vna_name, vna_next = struct.unpack_from("<IHHII", data, aux)
                    if name_at(vna_name) == "GLIBC_2.38" and not flags & VER_FLG_WEAK:
                        struct.pack_into("<H", data, aux + 4, flags | VER_FLG_WEAK)
                        changed += 1
                    aux += vna_next
                vn += vn_next
        f.seek(0)
        f.write(data)
    print(f"{path}: {changed} GLIBC_2.38 requirement(s) marked weak")


if __name__ == "__main__":
    main(sys.argv[1])
