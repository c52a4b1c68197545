#!/usr/bin/env python3
"""Convert an official Wan .pth checkpoint (a torch.save'd state_dict) to .safetensors.

LibTorch 1.13 cannot read the pickled OrderedDicts the official VAE and umT5 files are. Run this once where Python
torch is installed (any version): it needs nothing else.

    python3 scripts/convert_pth_to_safetensors.py Wan2.2_VAE.pth [out.safetensors]
"""
import json
import struct
import sys

import torch

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    src = sys.argv[1]
    dst = sys.argv[2] if len(sys.argv) == 3 else src.rsplit(".", 1)[0] + ".safetensors"
    state = torch.load(src, map_location="cpu")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    header, blobs, offset = {}, [], 0
    for name in sorted(state):
        t = state[name].detach().contiguous()
        if t.dtype not in DTYPES:
            sys.exit(f"{src}: tensor {name} has unsupported dtype {t.dtype}")
        # Raw little-endian bytes (bf16 has no numpy dtype, so go through an int16 view).
        data = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"source": src}
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    with open(dst + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text.encode())
        for b in blobs:
            f.write(b)
    import os
    os.replace(dst + ".tmp", dst)
    print(f"wrote {dst}: {len(blobs)} tensors, {offset / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
