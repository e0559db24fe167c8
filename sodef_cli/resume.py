"""``sodef harden --resume``: a checkpoint beside the output after each finished stage, and after every epoch
of adversarial training (:meth:`Checkpoint.progress`: Ctrl-C loses at most the epoch it interrupts).

``OUT.resume`` is a safetensors file holding what the finished stages produced (cached features, probe and head
weights), the random states at the end of the last of them, and a JSON record: the stage name, each stage's
figures and a digest of the config and inputs. It is written atomically after each stage and removed once the
hardened file exists. A resume with another config or other inputs is refused; a damaged file is never trusted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import ModelFileError

__all__ = ["Checkpoint", "STAGES"]

STAGES = ("features", "base", "phase1", "phase2")  # the stages a checkpoint holds, in the order they run

StageResult = tuple[dict[str, torch.Tensor], dict[str, Any]]  # (tensors, JSON records) of the finished stages


class Checkpoint:
    """The resume file of one hardening run, and :meth:`stage`, the one way a stage is cached.

    ``config`` is the part of the config that decides the results, ``inputs`` a text standing for the inputs (the
    backbone's weights, the data): both go into the digest a resumed run must match. ``generator`` is the run's
    data-order generator; its state and torch's are saved with every stage and restored after the last one.
    """

    KEY = "sodef_cli_resume"

    def __init__(
        self,
        out: str | Path,
        *,
        config: dict[str, Any],
        inputs: str,
        generator: torch.Generator,
        resume: bool,
        log: Callable[[str], None],
    ):
        self.path = self.path_for(out)
        self.digest = hashlib.sha256((json.dumps(config, sort_keys=True) + inputs).encode()).hexdigest()
        self.generator = generator
        self.tensors: dict[str, torch.Tensor] = {}
        self.meta: dict[str, Any] = {"stage": None}
        if self.path.exists() and not resume:
            log(f"note: {self.path} holds an interrupted run; pass --resume to continue it (starting over)")
        elif resume and self.path.exists():
            self.tensors, self.meta = self._read()
            log(f"resuming after stage '{self.meta['stage']}' from {self.path}")
        elif resume:
            log(f"nothing to resume ({self.path} does not exist); starting from the beginning")

    @staticmethod
    def path_for(out: str | Path) -> Path:
        return Path(str(out) + ".resume")

    def _read(self) -> StageResult:
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as fh:
                meta = json.loads((fh.metadata() or {}).get(self.KEY, "{}"))
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is reported, never trusted
            raise ModelFileError(f"cannot read the resume file {self.path} ({exc}); delete it to start over") from None
        if meta.get("digest") != self.digest:
            raise ModelFileError(
                f"{self.path} was made with a different configuration; delete it or rerun with the same options"
            )
        return tensors, meta

    def done(self, stage: str) -> bool:
        """Whether the interrupted run finished ``stage``."""
        return self.meta["stage"] is not None and STAGES.index(self.meta["stage"]) >= STAGES.index(stage)

    def stage(self, name: str, compute: Callable[[], StageResult]) -> StageResult:
        """Stage ``name``, once: from the checkpoint when the interrupted run finished it (the random streams then
        continue where that run saved them, if it was its last stage), else ``compute()`` -> (tensors, records),
        saved before returning. Returns the tensors and records of every finished stage, as a resumed run reads
        them (a later stage's tensors replace an earlier one's under the same name).
        """
        if self.done(name):
            if self.meta["stage"] == name:
                torch.set_rng_state(self.tensors["rng.torch"])
                self.generator.set_state(self.tensors["rng.gen"])
            return self.tensors, self.meta
        tensors, records = compute()
        self._save(name, tensors, records)
        return self.tensors, self.meta

    def _save(self, stage: str, tensors: dict[str, torch.Tensor], records: dict[str, Any]) -> None:
        self.tensors.update({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()})
        self.tensors["rng.torch"] = torch.get_rng_state()
        self.tensors["rng.gen"] = self.generator.get_state()
        self.meta.update(records, stage=stage)
        self._write()

    def _write(self) -> None:
        """The checkpoint as it stands, written atomically (with the digest a resumed run must match)."""
        from safetensors.torch import save_file

        from .io import atomic_path

        self.meta["digest"] = self.digest
        with atomic_path(self.path) as tmp:
            save_file(self.tensors, str(tmp), metadata={self.KEY: json.dumps(self.meta)})

    def progress(self, name: str, tensors: dict[str, torch.Tensor], records: dict[str, Any]) -> None:
        """Save the progress of the unfinished stage ``name`` (replacing its previous progress), atomically."""
        prefix = f"{name}."
        self.tensors = {k: v for k, v in self.tensors.items() if not k.startswith(prefix)}
        self.tensors.update({prefix + k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()})
        self.meta[f"{name}_progress"] = records
        self._write()

    def partial(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The progress of stage ``name`` an interrupted run saved, or None."""
        records = self.meta.get(f"{name}_progress")
        if records is None:
            return None
        prefix = f"{name}."
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}, records

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
