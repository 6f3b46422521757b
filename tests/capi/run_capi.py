"""Installs dcpp into a temporary prefix and uses it as an outside project would.

usage: run_capi.py BUILD_ROOT SOURCE_DIR (run by torch 2.13's Python, $DCPP_PYTHON2X)

`meson install --destdir` puts the build under a temporary directory; pkg-config finds dcp.pc
there (PKG_CONFIG_SYSROOT_DIR maps the prefix into it). The installed tree must hold dcpp,
dcpp-torch (libexec, when built), libdcp.so with its versioned SONAME exporting only dcp_*,
dcp/dcp.h and dcp.pc. Then a CMake project (find_package(PkgConfig) + pkg_check_modules, the
installed header only on its include path) and a ctypes script read a checkpoint torch 2.13
wrote and compare it with torch's values.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import torch.distributed.checkpoint as dcp

build_root, source_dir = sys.argv[1:3]
here = os.path.join(source_dir, "tests", "capi")


def run(*args, env=None, cwd=None):
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def find(root, name):
    hits = [os.path.join(d, name) for d, _, files in os.walk(root) if name in files]
    assert len(hits) == 1, f"{name}: {hits}"
    return hits[0]


work = tempfile.mkdtemp(prefix="dcp-capi-")
try:
    stage = os.path.join(work, "stage")
    run("meson", "install", "-C", build_root, "--destdir", stage, "--no-rebuild", "--quiet")
    pc = find(stage, "dcp.pc")
    dcpp = find(stage, "dcpp")
    assert os.access(dcpp, os.X_OK) and os.path.basename(os.path.dirname(dcpp)) == "bin", dcpp
    if os.environ.get("DCPP_HAVE_TORCH") == "1":
        assert find(stage, "dcpp-torch").split(os.sep)[-3:-1] == ["libexec", "dcpp"]
    header = find(stage, "dcp.h")
    assert header.endswith(os.path.join("include", "dcp", "dcp.h")), header
    libdir = os.path.dirname(os.path.dirname(pc))  # LIBDIR/pkgconfig/dcp.pc
    soname = [l for l in run("readelf", "-d", os.path.join(libdir, "libdcp.so")).splitlines() if "SONAME" in l]
    assert len(soname) == 1 and "[libdcp.so.0]" in soname[0], soname
    assert os.path.exists(os.path.join(libdir, "libdcp.so.0"))
    exported = [l.split()[-1].split("@")[0] for l in run("nm", "-D", "--defined-only", os.path.join(libdir, "libdcp.so.0")).splitlines()]
    foreign = [s for s in exported if not s.startswith("dcp_") and s != "DCP_0"]
    assert "dcp_open" in exported and not foreign, f"libdcp exports more than dcp_*: {foreign[:10]}"

    # Nothing of the build tree: meson test points LD_LIBRARY_PATH at it.
    env = dict(os.environ, PKG_CONFIG_LIBDIR=os.path.dirname(pc), PKG_CONFIG_PATH="",
               PKG_CONFIG_SYSROOT_DIR=stage)
    env.pop("LD_LIBRARY_PATH", None)
    flags = run("pkg-config", "--cflags", "--libs", "dcp", env=env).split()
    assert f"-I{os.path.dirname(os.path.dirname(header))}" in flags and "-ldcp" in flags, flags

    # A checkpoint written by torch 2.13, and each tensor's bytes as torch holds them.
    ckpt, expected = os.path.join(work, "ckpt"), os.path.join(work, "expected")
    os.makedirs(expected)
    g = torch.Generator().manual_seed(3)
    state = {
        "model.weight": torch.randn(7, 5, generator=g),
        "model.bias": torch.randn(5, generator=g, dtype=torch.float64),
        "model.emb": torch.randn(6, 4, generator=g).to(torch.bfloat16),
        "model.half": torch.randn(3, 2, 2, generator=g).to(torch.float16),
        "counts": torch.arange(-4, 8, dtype=torch.int64).reshape(4, 3),
        "mask": torch.rand(9, generator=g) > 0.5,
        "scale": torch.tensor(0.125),
        "step": 41,
        "config": {"lr": 0.001, "name": "adamw", "betas": [0.9, 0.95]},
    }
    dcp.save(state, checkpoint_id=ckpt)
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            with open(os.path.join(expected, key.encode().hex() + ".bin"), "wb") as f:
                f.write(value.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            if value.dim() == 2:
                with open(os.path.join(expected, key.encode().hex() + ".f64"), "wb") as f:
                    f.write(value.to(torch.float64).contiguous().numpy().tobytes())

    cmake_build = os.path.join(work, "cmake-build")
    run("cmake", "-S", os.path.join(here, "cmake_consumer"), "-B", cmake_build, env=env)
    run("cmake", "--build", cmake_build, env=env)
    consumer = os.path.join(cmake_build, "consumer")
    linked = [l for l in run("ldd", consumer, env=env).splitlines() if "libdcp" in l]
    assert len(linked) == 1 and linked[0].split("=>")[1].strip().startswith(stage), linked
    print(run(consumer, ckpt, expected, env=env).strip())

    print(run(sys.executable, os.path.join(here, "ctypes_consumer.py"), os.path.join(libdir, "libdcp.so.0"), ckpt,
              work, env=env).strip())
finally:
    shutil.rmtree(work, ignore_errors=True)
