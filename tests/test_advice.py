"""The causes in words, in the order to fix them (`gpu_watch.report.advice`): pure functions
over the causes `run.json` records, so every output that reads them says the same."""

from __future__ import annotations

from gpu_watch.judging.causes import cause
from gpu_watch.report.advice import (
    FIRST,
    THEN,
    cause_codes_in_order,
    cpu_banner,
    fixes,
    remedy_parts,
)

DRIVER = cause("no_nvidia_driver", "No NVIDIA driver is loaded, so no GPU can be used: NVML "
               "reports NVMLError_LibraryNotFound.", "Install the driver (`sudo "
               "ubuntu-drivers install`); then reboot.").to_dict()
JAX_CPU = cause("cpu_only_build", "JAX 0.10.2 with jaxlib 0.10.2 is CPU-only: no CUDA plugin is "
                "installed.", 'pip install -U "jax[cuda12]==0.10.2"').to_dict()
INPUT = cause("input_bound", wait_fraction=0.5).to_dict()


def test_two_blockers_are_first_and_then_and_a_warning_has_no_place():
    found = fixes([DRIVER, INPUT, JAX_CPU, "not a cause", {"message": "no code"}])
    assert [(f.code, f.order, f.blocking) for f in found] == [
        ("no_nvidia_driver", FIRST, True), ("input_bound", None, False),
        ("cpu_only_build", THEN, True)]
    assert [f.label for f in found] == ["First: ", "", "Then: "]


def test_a_single_blocker_needs_no_order():
    assert [f.order for f in fixes([JAX_CPU, INPUT])] == [None, None]
    assert cause_codes_in_order([JAX_CPU]) == "cpu_only_build"
    assert cause_codes_in_order([DRIVER, JAX_CPU]) == "first no_nvidia_driver, then cpu_only_build"
    assert cause_codes_in_order([INPUT]) == "cause unknown"


def test_the_banner_names_the_recorded_causes_in_order_without_code_marks():
    assert cpu_banner([DRIVER, JAX_CPU]) == (
        "Training ran on the CPU. First: No NVIDIA driver is loaded, so no GPU can be used; "
        "fix: Install the driver (sudo ubuntu-drivers install). Then: JAX 0.10.2 with jaxlib "
        "0.10.2 is CPU-only.")
    assert cpu_banner([JAX_CPU]) == (
        'Training ran on the CPU: JAX 0.10.2 with jaxlib 0.10.2 is CPU-only; fix: pip install '
        '-U "jax[cuda12]==0.10.2".')
    # Without a cause that blocks the GPU, the first one recorded leads.
    lead = cpu_banner([INPUT])
    assert lead.startswith("Training ran on the CPU: The training loop spent much of its time")
    # A remedy too long for a banner is cut at 160 characters, and says so.
    assert lead.endswith("...") and len(lead.split("; fix: ")[1]) == 160
    assert cpu_banner([]) == "Training ran on the CPU."


def test_a_page_that_lists_the_causes_gets_a_banner_that_only_points_at_them():
    assert cpu_banner([DRIVER, JAX_CPU], with_causes=False) == (
        "Training ran on the CPU: 2 causes below, to fix in the order given.")
    assert cpu_banner([JAX_CPU], with_causes=False) == (
        "Training ran on the CPU: the cause and its remedy are below.")


def test_a_remedy_is_cut_into_prose_and_code():
    assert remedy_parts("Run `nvidia-smi`, then `sudo reboot`.") == [
        ("Run ", False), ("nvidia-smi", True), (", then ", False), ("sudo reboot", True),
        (".", False)]
    assert remedy_parts('pip install -U "jax[cuda12]"  # the plugin') == [
        ('pip install -U "jax[cuda12]"  # the plugin', True)]
    assert remedy_parts("DataLoader(dataset, num_workers=8)") == [
        ("DataLoader(dataset, num_workers=8)", True)]
    sentence = "Make the input pipeline prepare batches ahead: a tf.data.Dataset wants .prefetch"
    assert remedy_parts(sentence) == [(sentence, False)]
    assert remedy_parts("") == []
