"""The bridge driver's nftables table as data: which rules each state asks for, in which order (the
host tier applies them to a real kernel: tests/host/test_networks_bridge.py)."""

from cimid_bridge import rules

from cimid.hookspecs import NetworkSpec


def net(network_id, bridge, cidr, **kw):
    return NetworkSpec(network_id=network_id, bridge=bridge, cidr=cidr, gateway=cidr.rsplit(".", 1)[0] + ".1", **kw)


def summary(ruleset):
    """[(chain, comment, (iifname, oifname), verdict)] of every rule, in order."""
    out = []
    for cmd in ruleset["nftables"]:
        rule = cmd.get("add", {}).get("rule")
        if rule is None:
            continue
        names = {e["match"]["left"]["meta"]["key"]: e["match"]["right"] for e in rule["expr"]
                 if "match" in e and "meta" in e["match"]["left"]}
        verdict = next(k for k in ("accept", "drop", "masquerade") if any(k in e for e in rule["expr"]))
        out.append((rule["chain"], rule["comment"], (names.get("iifname"), names.get("oifname")), verdict))
    return out


def test_no_network_means_no_table():
    cmds = rules.ruleset("cimid_t", [], {})["nftables"]
    table = {"family": "inet", "name": "cimid_t"}
    assert cmds == [{"add": {"table": table}}, {"delete": {"table": table}}]


def test_a_private_network_forwards_only_within_its_bridge_and_reaches_only_dhcp_and_dns_on_the_host():
    got = summary(rules.ruleset("cimid_t", [net("a", "cimida", "10.1.0.0/24")], {}))
    assert got == [
        ("forward", "net:a", ("cimida", "cimida"), "accept"),
        ("forward", "net:a", (None, "cimida"), "drop"),
        ("forward", "net:a", ("cimida", None), "drop"),
        ("input", "net:a", ("cimida", None), "accept"),  # udp 67
        ("input", "net:a", ("cimida", None), "accept"),  # udp 53
        ("input", "net:a", ("cimida", None), "accept"),  # tcp 53
        ("input", "net:a", ("cimida", None), "drop"),
    ]


def test_a_nat_network_reaches_its_uplink_masqueraded_and_gets_only_answers_back():
    got = summary(rules.ruleset("cimid_t", [net("p", "cimidp", "10.2.0.0/24", network_type="PUBLIC", uplink="eth9"),
                                 net("q", "cimidq", "10.3.0.0/24")], {}))
    assert ("forward", "net:p", ("cimidp", "eth9"), "accept") in got
    assert ("forward", "net:p", ("eth9", "cimidp"), "accept") in got
    assert ("postrouting", "net:p", (None, "eth9"), "masquerade") in got
    assert not any(chain == "input" and comment == "net:p" for chain, comment, *_ in got)  # PUBLIC may use the host
    # Nothing is accepted into a bridge after the drops into bridges (answers come first).
    forward = [(ends, v) for chain, _, ends, v in got if chain == "forward"]
    first_drop = forward.index(((None, "cimidp"), "drop"))
    assert not [ends for ends, v in forward[first_drop:] if v == "accept" and ends[1] in ("cimidp", "cimidq")]


def test_a_nat_network_without_an_uplink_goes_out_by_any_link_but_a_cimid_bridge():
    ruleset = rules.ruleset("cimid_t", [net("p", "cimidp", "10.2.0.0/24", network_type="PUBLIC"),
                             net("q", "cimidq", "10.3.0.0/24")], {})
    masquerade = next(c["add"]["rule"] for c in ruleset["nftables"]
                      if c.get("add", {}).get("rule", {}).get("chain") == "postrouting")
    assert {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": {"set": ["cimidp", "cimidq"]}}} \
        in masquerade["expr"]
    got = summary(ruleset)
    # out by anything left once the drops into every cimid bridge have run
    assert got.index(("forward", "net:p", ("cimidp", None), "accept")) > got.index(("forward", "net:q", (None, "cimidq"), "drop"))


def test_a_bridged_public_network_is_not_masqueraded():
    got = summary(rules.ruleset("cimid_t", [net("b", "cimidb", "10.3.0.0/24", network_type="PUBLIC", uplink="eth9",
                                     bridged=True)], {}))
    assert not any(v == "masquerade" for *_, v in got)
    assert not any("eth9" in ends for _, _, ends, _ in got)


def test_a_forwarding_group_joins_each_pair_of_its_members_both_ways():
    nets = [net("a", "cimida", "10.1.0.0/24"), net("b", "cimidb", "10.2.0.0/24"), net("c", "cimidc", "10.3.0.0/24")]
    got = summary(rules.ruleset("cimid_t", nets[:2], {"g": ["a", "b", "c"]}))  # c was deleted: no rule names it
    group = [ends for _, comment, ends, _ in got if comment == "group:g"]
    assert sorted(group) == [("cimida", "cimidb"), ("cimidb", "cimida")]
    first_drop = next(i for i, (_, _, _, v) in enumerate(got) if v == "drop")
    assert all(i < first_drop for i, (_, comment, _, _) in enumerate(got) if comment == "group:g")
