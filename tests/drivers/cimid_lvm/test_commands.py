"""The LVM pool's command lines and its reading of lvm's JSON reports, with a runner that records each
command and answers with report text as lvm 2.03 prints it (the host tier runs the real lvm)."""

import asyncio

import pytest
from cimid_lvm import Completed, LocalRunner, LvmCommands, LvmVolumes
from cimid_lvm.runner import parse_report

from cimid.config import load
from cimid.errors import DriverError

LVS = """  {
      "report": [
          {
              "lv": [
                  {"lv_name":"cimid-v-a1", "lv_size":"67108864", "lv_attr":"Vwi-a-tz--", "lv_tags":"cimid", "pool_lv":"tp", "origin":"", "data_percent":"25.00", "metadata_percent":""},
                  {"lv_name":"cimid-v-orphan", "lv_size":"4194304", "lv_attr":"Vwi-a-tz--", "lv_tags":"cimid", "pool_lv":"tp", "origin":"", "data_percent":"0.00", "metadata_percent":""},
                  {"lv_name":"cimid-v-notours", "lv_size":"4194304", "lv_attr":"Vwi-a-tz--", "lv_tags":"", "pool_lv":"tp", "origin":"", "data_percent":"0.00", "metadata_percent":""},
                  {"lv_name":"root", "lv_size":"8589934592", "lv_attr":"-wi-ao----", "lv_tags":"", "pool_lv":"", "origin":"", "data_percent":"", "metadata_percent":""},
                  {"lv_name":"tp", "lv_size":"1073741824", "lv_attr":"twi-aotz--", "lv_tags":"", "pool_lv":"", "origin":"", "data_percent":"92.50", "metadata_percent":"11.04"}
              ]
          }
      ]
  }
"""
VGS = """  {"report": [{"vg": [{"vg_name":"vg0", "vg_size":"10733223936", "vg_free":"1069547520", "vg_extent_size":"4194304"}]}]}"""


class RecordingRunner:
    """Answers lvs and vgs with the reports above, everything else with success; keeps every argv."""

    def __init__(self, fail: str = "", lvs: str = LVS):
        self.argvs: list[list[str]] = []
        self.fail = fail
        self.lvs = lvs

    async def run(self, argv):
        self.argvs.append(list(argv))
        if self.fail and self.fail in argv:
            return Completed(5, "", f"  WARNING: noise\n  Volume group \"vg0\" has insufficient free space.\n")
        return Completed(0, {"lvs": self.lvs, "vgs": VGS}.get(argv[1], ""), "")

    def commands(self):
        return [a[1] for a in self.argvs if a[0] == "lvm" and a[1] not in ("lvs", "vgs")]


@pytest.fixture
def config(tmp_path):
    return load(profile="host", state_dir=tmp_path / "state")


def pool_with(config, runner, **settings):
    return LvmVolumes(config, "fast", {"driver": "lvm", "volume_group": "vg0", **settings}, runner)


def test_a_report_is_read_as_json_whatever_surrounds_it():
    rows = parse_report("lvs --reportformat json\r\n" + LVS + "\r\n@@tag 0", "lv")
    assert [r["lv_name"] for r in rows][-1] == "tp" and rows[-1]["data_percent"] == "92.50"
    with pytest.raises(DriverError, match="no JSON report"):
        parse_report("  Volume group not found", "lv")
    with pytest.raises(DriverError, match="not the JSON expected"):
        parse_report("{not json}", "lv")


async def test_every_command_carries_the_pools_options_and_json_reports():
    runner = RecordingRunner()
    lvm = LvmCommands(runner, "global{activation=0}", ["/dev/loop7"])
    await lvm.lvs("vg0")
    assert runner.argvs[0] == ["lvm", "lvs", "--config", "global{activation=0}", "--devices", "/dev/loop7",
                               "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
                               LvmCommands.LV_FIELDS, "vg0"]


async def test_thin_create_snapshot_grow_restore_command_lines(config):
    runner = RecordingRunner()
    pool = pool_with(config, runner, thin_pool="tp")
    await pool.create_volume("n1", 65536)
    assert ["lvm", "lvcreate", "-q", "-y", "-n", "cimid-v-n1", "-V", "65536k", "--thinpool", "vg0/tp",
            "--addtag", "cimid"] in runner.argvs
    await pool.snapshot_volume("a1", "s1")
    assert ["lvm", "lvcreate", "-q", "-y", "-s", "-n", "cimid-i-s1", "--addtag", "cimid", "-p", "r",
            "vg0/cimid-v-a1"] in runner.argvs
    await pool.grow_volume("a1", 131072, attached_live=True)
    assert ["lvm", "lvextend", "-q", "-L", "131072k", "vg0/cimid-v-a1"] in runner.argvs
    with pytest.raises(DriverError, match="not shrunk"):
        await pool.grow_volume("a1", 1024, attached_live=False)
    assert await pool.attachment("a1") == {"kind": "block", "path": "/dev/vg0/cimid-v-a1", "format": "raw"}
    assert await pool.volume("a1") == {"capacity_kb": 65536, "format": "raw"}
    assert await pool.volume("missing") is None


async def test_thick_create_and_space_from_the_volume_group(config):
    runner = RecordingRunner()
    pool = pool_with(config, runner)
    await pool.create_volume("k1", 2048)
    assert ["lvm", "lvcreate", "-q", "-y", "-n", "cimid-v-k1", "-L", "2048k", "--addtag", "cimid", "vg0"] \
        in runner.argvs
    assert await pool.space() == {"total_kb": 10733223936 // 1024, "free_kb": 1069547520 // 1024}


async def test_thin_space_and_health_give_the_fill(config):
    pool = pool_with(config, RecordingRunner(), thin_pool="tp", thin_fill_limit=90)
    space = await pool.space()
    assert space == {"total_kb": 1048576, "free_kb": int(1073741824 * 0.075) // 1024, "fill_percent": 92.5,
                     "fill_limit_percent": 90}
    health = await pool.health()
    assert health["thin pool"].startswith("tp: 1048576 KiB, data 92.5% full, metadata 11.0% full")
    assert health["volume group"] == "vg0, 2 volumes and 0 images of cimid"  # not the untagged one


async def test_a_failed_lvcreate_says_why_and_leaves_nothing(config):
    runner = RecordingRunner(fail="lvcreate")
    pool = pool_with(config, runner, thin_pool="tp")
    with pytest.raises(DriverError, match='lvm lvcreate failed \\(5\\): Volume group "vg0" has insufficient'):
        await pool.create_volume("n2", 65536)
    assert runner.commands() == ["lvcreate"]  # it made nothing, so there is nothing to remove


async def test_adopt_removes_only_its_own_orphans(config):
    runner = RecordingRunner()
    pool = pool_with(config, runner, thin_pool="tp")
    await pool.adopt({"a1": 65536}, {})
    removes = [a[-1] for a in runner.argvs if a[1] == "lvremove"]
    assert removes == ["vg0/cimid-v-orphan"]  # not root, tp, nor cimid-v-notours (no cimid tag)
    await pool.delete_volume("notours")
    assert [a[-1] for a in runner.argvs if a[1] == "lvremove"] == ["vg0/cimid-v-orphan"]


async def test_a_taken_id_or_a_missing_image_is_refused_before_any_change(config):
    runner = RecordingRunner()
    pool = pool_with(config, runner, thin_pool="tp")
    with pytest.raises(DriverError, match="already has a volume a1"):
        await pool.create_volume("a1", 1024)
    with pytest.raises(DriverError, match="holds no image nope"):
        await pool.create_volume("n3", 1024, "nope")
    assert runner.commands() == []


async def test_the_local_runner_runs_with_lvms_environment():
    done = await LocalRunner().run(["sh", "-c", "echo $LVM_SUPPRESS_FD_WARNINGS; echo err >&2; exit 3"])
    assert done == Completed(3, "1\n", "err\n")


def test_the_lvm_plugin_answers_for_lvm_pools_only(config):
    import cimid_lvm
    assert isinstance(cimid_lvm.cimid_storage_pool(config, "p", {"driver": "lvm", "volume_group": "vg"}),
                      LvmVolumes)
    assert cimid_lvm.cimid_storage_pool(config, "p", {"driver": "dir"}) is None


async def test_a_restore_cut_short_between_its_renames_is_finished(config):
    # Killed after removing the old volume, before renaming the restored copy: the copy becomes the volume.
    half_done = LVS.replace('"cimid-v-a1"', '"cimid-r-a1"')
    runner = RecordingRunner(lvs=half_done)
    pool = pool_with(config, runner, thin_pool="tp")
    await pool.volume("a1")
    assert ["lvm", "lvrename", "-q", "vg0", "cimid-r-a1", "cimid-v-a1"] in runner.argvs
    # Killed before the old volume was removed: the copy is dropped, the volume keeps its data.
    both = LVS.replace('{"lv_name":"root"', '{"lv_name":"cimid-r-a1", "lv_size":"67108864", "lv_attr":"Vwi-a-tz--", '
                       '"lv_tags":"cimid", "pool_lv":"tp", "origin":"", "data_percent":"0.00", "metadata_percent":""},'
                       '\n{"lv_name":"root"')
    runner = RecordingRunner(lvs=both)
    await pool_with(config, runner, thin_pool="tp").volume("a1")
    assert ["lvm", "lvremove", "-q", "-y", "vg0/cimid-r-a1"] in runner.argvs
    assert not any(a[1] == "lvrename" for a in runner.argvs)


@pytest.mark.parametrize("pool, words", [
    ({"driver": "lvm"}, "an lvm pool needs its volume group"),
    ({"driver": "lvm", "volume_group": "vg0", "thin_fill_limit": 0}, "percentage from 1 to 100"),
    ({"driver": "lvm", "volume_group": "vg0", "thin_fill_limit": "90"}, "must be a int"),
    ({"driver": "lvm", "volume_group": "vg0", "path": "/x"}, "unknown key storage.pools.fast.path"),
])
def test_the_lvm_pools_configuration_is_checked(tmp_path, pool, words):
    from cimid.config import ConfigError
    with pytest.raises(ConfigError, match=words):
        load(profile="host", state_dir=tmp_path, overrides={"storage": {"default_pool": "fast",
                                                                       "pools": {"fast": pool}}})
    load(profile="host", state_dir=tmp_path, overrides={"storage": {"default_pool": "fast", "pools": {"fast": {
        "driver": "lvm", "volume_group": "vg0", "thin_pool": "tp", "thin_fill_limit": 80, "lvm_config": ""}}}})


async def test_usage_is_a_thin_volumes_data_and_a_thick_volumes_size(config):
    thick = LVS.replace('"lv_name":"cimid-v-orphan", "lv_size":"4194304", "lv_attr":"Vwi-a-tz--", "lv_tags":"cimid", '
                        '"pool_lv":"tp"', '"lv_name":"cimid-v-orphan", "lv_size":"4194304", "lv_attr":"-wi-a-----", '
                        '"lv_tags":"cimid", "pool_lv":""')
    pool = pool_with(config, RecordingRunner(lvs=thick), thin_pool="tp")
    assert await pool.usage() == {"a1": 16384, "orphan": 4096}  # 25 % of 64 MiB; a thick LV's whole size
