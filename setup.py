"""Builds rasterizer_ffi's native libraries with CMake and installs both packages.

The CPU library is always built. The CUDA library is built when ``nvcc`` is found; set
``INSTANT4D_CUDA=0`` to skip it or ``INSTANT4D_CUDA=1`` to require it. ``INSTANT4D_CUDA_ARCHS``
overrides the CUDA architectures (default "75;80;86;89;90"). Headers come from the jax installed in
the build environment (``jax.ffi.include_dir()``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _want_cuda() -> bool | None:
    flag = os.environ.get("INSTANT4D_CUDA", "").strip().lower()
    if flag in ("0", "off", "false", "no"):
        return False
    if flag in ("1", "on", "true", "yes"):
        return True
    return None  # decide by whether nvcc is found


def _find_nvcc() -> str | None:
    nvcc = shutil.which("nvcc")
    if nvcc:
        return nvcc
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return None


NATIVE_LIBS = ("librasterizer_cpu.so", "librasterizer_cuda.so")


class CMakeBuild(build_ext):
    """Runs CMake on rasterizer_ffi/ and puts the libraries next to the package's Python files.

    The libraries are not Python extensions, so setuptools does not know them: they are added to the
    outputs (wheels, install records) and, for editable installs (PEP 660 builds in a temporary
    directory, then copies extensions back), copied into the source package next to the marker.
    """

    def _built_libs(self) -> list[Path]:
        pkg = Path(self.build_lib) / "rasterizer_ffi"
        return [pkg / name for name in NATIVE_LIBS if (pkg / name).exists()]

    def _source_pkg_dir(self) -> Path:
        return Path(self.get_finalized_command("build_py").get_package_dir("rasterizer_ffi"))

    def copy_extensions_to_source(self) -> None:
        super().copy_extensions_to_source()
        built = self._built_libs()
        dest = self._source_pkg_dir()
        for name in NATIVE_LIBS:
            target = dest / name
            source = Path(self.build_lib) / "rasterizer_ffi" / name
            if source in built:
                self.copy_file(str(source), str(target), level=self.verbose)
            elif target.exists():  # e.g. a CUDA library left from an earlier build: would not match
                print(f"[rasterizer_ffi] removing stale {target}", file=sys.stderr)
                target.unlink()

    def _get_output_mapping(self):
        yield from super()._get_output_mapping()
        if self.inplace:
            dest = self._source_pkg_dir()
            for lib in self._built_libs():
                yield str(lib), str(dest / lib.name)

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        if not self.inplace:
            outputs = sorted(set(outputs) | {str(p) for p in self._built_libs()})
        return outputs

    def build_extension(self, ext: Extension) -> None:
        import jax.ffi

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        out_dir.mkdir(parents=True, exist_ok=True)
        build_dir = Path(self.build_temp).resolve() / "rasterizer_ffi"
        build_dir.mkdir(parents=True, exist_ok=True)

        want = _want_cuda()
        nvcc = _find_nvcc()
        if want and not nvcc:
            raise RuntimeError("INSTANT4D_CUDA=1 but nvcc was not found (PATH, CUDA_HOME, /usr/local/cuda)")
        cuda = bool(nvcc) if want is None else want
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DXLA_FFI_INCLUDE_DIR={jax.ffi.include_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DINSTANT4D_CUDA={'ON' if cuda else 'OFF'}",
        ]
        if cuda:
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ.get('INSTANT4D_CUDA_ARCHS', '75;80;86;89;90')}")
        print(f"[rasterizer_ffi] building CPU library{' and CUDA library' if cuda else ''} into {out_dir}",
              file=sys.stderr)
        subprocess.run(["cmake", "-S", str(ROOT / "rasterizer_ffi"), "-B", str(build_dir), *args], check=True)
        jobs = str(max(1, os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)
        # setuptools expects a file at the extension's path: the CPU library plays that role.
        produced = out_dir / "librasterizer_cpu.so"
        if not produced.exists():
            raise RuntimeError(f"CMake did not produce {produced}")
        target = Path(self.get_ext_fullpath(ext.name))
        if target.resolve() != produced.resolve():
            shutil.copyfile(produced, target)


FACE = ["dlib-bin>=20,<21", "face-recognition-models==0.3.0"]

setup(
    name="jax_instant4d",
    version="0.1.0",
    description="Instant expressive Gaussian head avatars in JAX, with an XLA-FFI Gaussian rasterizer",
    python_requires=">=3.11",
    # launch/ is the package instant4d_launch (the sweep launcher behind `instant4d sweep`; the shell
    # launchers beside it are used from a checkout)
    packages=[*find_packages(include=["jax_instant4d", "jax_instant4d.*", "rasterizer_ffi"]), "instant4d_launch"],
    package_dir={"instant4d_launch": "launch"},
    package_data={"rasterizer_ffi": ["csrc/*.h", "csrc/cpu/*", "csrc/cuda/*", "CMakeLists.txt", "*.so"]},
    ext_modules=[Extension("rasterizer_ffi._native_marker", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "grain>=0.2.15,<0.3",
        "jaxtyping>=0.3,<0.4",
        "tensorflow-datasets>=4.9.8,<5",
        "tensorboardX>=2.6,<3",
        "safetensors>=0.4,<1",
        "ml_collections>=1.0,<2",
        "numpy>=2,<3",
        "pillow>=10",
        "imageio>=2.34,<3",
        "imageio-ffmpeg>=0.5,<1",
        "tqdm>=4.66",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        # face detection + 68-point landmarks for `instant4d animate` (prebuilt dlib wheels; the model
        # files ship in face-recognition-models, ~100 MB; nothing is downloaded at run time)
        "face": FACE,
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "scikit-image>=0.22", *FACE],
        "torch": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["instant4d=jax_instant4d.cli:main"]},
)
