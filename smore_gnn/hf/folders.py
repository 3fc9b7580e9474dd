"""Adapter folders on ``SMoREModel``: ``save_pretrained``, ``from_pretrained``, ``load_adapter``.

The peft layout: the ``"default"`` adapter at the top of the folder, every other named adapter
in a subfolder of its name. Each adapter folder is written atomically
(:func:`smore_gnn.hf.save.write_adapter`) and validated completely before a model is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from smore_gnn._version import __version__
from smore_gnn.hf import adapters as io
from smore_gnn.hf.save import write_adapter


class AdapterFolders:
    """Mixin of :class:`~smore_gnn.hf.model.SMoREModel` (uses its ``peft_config`` and slots)."""

    def save_pretrained(
        self,
        save_directory: str | Path,
        selected_adapters: list[str] | None = None,
        base_model_name: str | None = None,
    ) -> None:
        """Write each adapter atomically: ``"default"`` to the folder, others to subfolders.

        Every name in ``selected_adapters`` is checked before anything is written.
        """
        names = list(self.peft_config) if selected_adapters is None else selected_adapters
        if isinstance(names, str) or not isinstance(names, list | tuple):
            raise TypeError(
                f"selected_adapters must be a list of adapter names (got {names!r}); "
                f"e.g. {list(self.peft_config)[:1]}"
            )
        unknown = [n for n in names if not isinstance(n, str) or n not in self.peft_config]
        if unknown:
            raise ValueError(
                f"No adapters named {unknown} (adapters: {list(self.peft_config)}); nothing "
                "was saved: pass names from that list"
            )
        for name in names:
            spec = self.peft_config[name]
            io.check_spec(spec.config, spec.method, io.ADAPTER_METHODS)  # never unloadable
        for name in names:
            out = Path(save_directory) if name == "default" else Path(save_directory) / name
            self._write(name, out, base_model_name)

    def _write(self, name: str, directory: str | Path, base_model_name: str | None = None) -> None:
        spec = self.peft_config[name]
        config = getattr(self.model, "config", None)
        base = base_model_name or getattr(config, "name_or_path", None) or None
        tensors = io.adapter_tensors(self._layers_of(name))
        write_adapter(directory, spec.to_meta(base, __version__), tensors)

    def load_adapter(
        self, directory: str | Path, adapter_name: str, is_trainable: bool = False
    ) -> None:
        """Load a folder as a new named adapter, or into the same-named adapter of equal spec.

        Everything is validated first: on any error the model is left unchanged.
        """
        self._check_loaded()
        spec, tensors = io.read_folder(self.model, directory, io.ADAPTER_METHODS)
        if adapter_name in self.peft_config:
            mine = self.peft_config[adapter_name]
            if (mine.config, sorted(mine.names)) != (spec.config, sorted(spec.names)):
                raise ValueError(
                    f"The adapter in {directory} has config {spec.config} on "
                    f"{len(spec.names)} modules; adapter {adapter_name!r} has {mine.config} "
                    f"on {len(mine.names)}; load it under a new adapter_name"
                )
            trainable = is_trainable and adapter_name == self._active
            io.copy_in(self._layers_of(adapter_name), tensors, trainable)
            return
        io.check_adapter_name(adapter_name, self.peft_config)
        self._inject(adapter_name, spec)
        try:
            io.copy_in(self._layers_of(adapter_name), tensors, False)  # inactive: frozen
        except BaseException:
            for name, slot in self._slots().items():
                self._remove(name, slot, adapter_name)
            del self.peft_config[adapter_name]
            raise

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        directory: str | Path,
        is_trainable: bool = False,
        adapter_name: str = "default",
    ) -> Any:
        """Wrap the base ``model`` with the adapter saved in ``directory`` (peft's signature).

        Everything is validated before the model is touched: on any error it is unchanged.
        """
        if (
            isinstance(model, AdapterFolders)
            or io.adapted_modules(model)
            or io.adapted_slots(model)
        ):
            raise ValueError(
                "from_pretrained expects a base model (this one holds S'MoRE adapters); use "
                "sm.load_adapter(directory, adapter_name) to add one to an SMoREModel"
            )
        io.check_adapter_name(adapter_name, {})
        spec, tensors = io.read_folder(model, directory, io.ADAPTER_METHODS)
        flags = {p: p.requires_grad for p in model.parameters()}
        sm = cls(
            model, spec.config, list(spec.names), method=spec.method, adapter_name=adapter_name
        )
        try:
            sm.peft_config[adapter_name] = spec  # the user's patterns, as saved
            io.copy_in(sm.adapters(), tensors, is_trainable)
        except BaseException:
            sm._restore(flags)
            raise
        return sm
