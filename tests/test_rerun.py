"""The rebuild command a corrupt intermediate's error prints (workflow/rerun.py)."""
from workflow import atomic, rerun


def test_the_recorded_command_drops_dry_runs_and_earlier_forcing(monkeypatch):
    argv = ["/v/bin/snakemake", "--cores", "2", "-n", "-R", "a.h5", "b.h5", "--configfile", "my cfg.yaml",
            "target.h5", "--forcerun=c.h5", "-F"]
    assert rerun.clean(argv) == ["/v/bin/snakemake", "--cores", "2", "--configfile", "my cfg.yaml", "target.h5"]
    monkeypatch.setenv(rerun.ENV, "")          # restored (unset) after the test; record() overwrites it
    rerun.record(argv)
    assert rerun.command("results/x/m 0.h5") == ("/v/bin/snakemake --cores 2 --configfile 'my cfg.yaml' target.h5 "
                                                 "--forcerun 'results/x/m 0.h5'")
    assert atomic.rebuild_hint("r.h5").endswith("with: /v/bin/snakemake --cores 2 --configfile 'my cfg.yaml' "
                                                "target.h5 --forcerun r.h5")


def test_python_m_snakemake_is_recorded_as_a_runnable_command(monkeypatch):
    import sys

    monkeypatch.setenv(rerun.ENV, "")
    rerun.record(["/site/snakemake/__main__.py", "--cores", "1"])
    assert rerun.command("r.h5") == f"{sys.executable} -m snakemake --cores 1 --forcerun r.h5"


def test_without_a_recorded_command_the_hint_is_the_plain_one(monkeypatch):
    monkeypatch.delenv(rerun.ENV, raising=False)
    assert rerun.command("r.h5") == "snakemake --cores all --forcerun r.h5"
