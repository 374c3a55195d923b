"""Table-driven tests of ``bridge.core.routes.route``."""

import pytest

from bridge.core import codes, routes
from bridge.core.codes import BadRequest, MethodNotAllowed, NotFound
from bridge.core.routes import Route, route

FETCH = 5  # RFC 8132 FETCH; not supported by the bridge


def p(text):
    """'/api/v1/T/telemetry' -> ('api', 'v1', 'T', 'telemetry'), one segment per Uri-Path option."""
    return tuple(text.strip("/").split("/")) if text.strip("/") else ()


ACCEPTED = [
    # (id, method, segments, expected route)
    ("token_telemetry", codes.POST, p("/api/v1/T/telemetry"), Route("telemetry", token="T")),
    ("token_attributes", codes.POST, p("/api/v1/T/attributes"), Route("attributes", token="T")),
    ("token_attributes_get", codes.GET, p("/api/v1/T/attributes"), Route("attributes", token="T")),
    ("token_claim", codes.POST, p("/api/v1/T/claim"), Route("claim", token="T")),
    ("feature_upper_case", codes.POST, p("/api/v1/T/TELEMETRY"), Route("telemetry", token="T")),
    ("feature_mixed_case", codes.POST, p("/api/v1/T/Attributes"), Route("attributes", token="T")),
    ("token_case_kept", codes.POST, p("/api/v1/AbC/telemetry"), Route("telemetry", token="AbC")),
    ("numeric_token", codes.POST, p("/api/v1/12345/telemetry"), Route("telemetry", token="12345")),
    ("single_option_with_slashes", codes.POST, ("/api/v1/T/telemetry",),
     Route("telemetry", token="T")),
    ("single_option_without_leading_slash", codes.POST, ("api/v1/T/telemetry",),
     Route("telemetry", token="T")),
    ("token_rpc_subscribe", codes.GET, p("/api/v1/T/rpc"), Route("rpc", token="T")),
    ("token_rpc_with_id", codes.POST, p("/api/v1/T/rpc/42"), Route("rpc", token="T", rpc_id=42)),
    ("token_rpc_non_numeric_id", codes.POST, p("/api/v1/T/rpc/abc"), Route("rpc", token="T")),
    ("token_rpc_non_ascii_digits_id", codes.POST, ("api", "v1", "T", "rpc", "\u0664\u0662"),
     Route("rpc", token="T")),
    ("single_option_rpc_id", codes.POST, ("/api/v1/T/rpc/7",), Route("rpc", token="T", rpc_id=7)),
    ("x509_telemetry", codes.POST, p("/api/v1/telemetry"), Route("telemetry")),
    ("x509_feature_upper_case", codes.POST, p("/api/v1/ATTRIBUTES"), Route("attributes")),
    ("x509_rpc_with_id", codes.POST, p("/api/v1/rpc/42"), Route("rpc", rpc_id=42)),
    ("provision", codes.POST, p("/api/v1/provision"), Route("provision")),
    ("provision_upper_case", codes.POST, p("/api/v1/PROVISION"), Route("provision")),
    ("provision_after_token_has_no_token", codes.POST, p("/api/v1/T/provision"),
     Route("provision")),
    ("empty_token_is_none", codes.POST, ("api", "v1", "", "telemetry"), Route("telemetry")),
    ("firmware_get", codes.GET, p("/fw/T"), Route("firmware", token="T")),
    ("software_get", codes.GET, p("/sw/T"), Route("software", token="T")),
    ("firmware_without_token", codes.GET, p("/fw"), Route("firmware")),
]


@pytest.mark.parametrize("method,segments,expected", [case[1:] for case in ACCEPTED],
                         ids=[case[0] for case in ACCEPTED])
def test_route_accepts_api_paths(method, segments, expected):
    assert route(method, segments) == expected


REJECTED = [
    # (id, method, segments, error class, dotted code)
    ("unknown_feature", codes.POST, p("/api/v1/T/bogus"), BadRequest, "4.00"),
    ("unknown_feature_x509_form", codes.POST, p("/api/v1/bogus"), BadRequest, "4.00"),
    ("feature_is_numeric_in_token_form", codes.POST, p("/api/v1/T/42"), BadRequest, "4.00"),
    ("too_short_no_feature", codes.POST, p("/api/v1"), BadRequest, "4.00"),
    ("too_short_single_option", codes.POST, ("/api/v1",), BadRequest, "4.00"),
    ("outside_api_root", codes.POST, p("/foo/bar"), NotFound, "4.04"),
    ("wrong_api_version", codes.POST, p("/api/v2/T/telemetry"), NotFound, "4.04"),
    ("api_only", codes.POST, p("/api"), NotFound, "4.04"),
    ("empty_path", codes.POST, (), NotFound, "4.04"),
    ("api_case_sensitive", codes.POST, p("/API/V1/T/telemetry"), NotFound, "4.04"),
    ("put", codes.PUT, p("/api/v1/T/telemetry"), MethodNotAllowed, "4.05"),
    ("delete", codes.DELETE, p("/api/v1/T/telemetry"), MethodNotAllowed, "4.05"),
    ("fetch", FETCH, p("/api/v1/T/telemetry"), MethodNotAllowed, "4.05"),
    ("put_x509_form", codes.PUT, p("/api/v1/rpc/42"), MethodNotAllowed, "4.05"),
    ("firmware_post", codes.POST, p("/fw/T"), MethodNotAllowed, "4.05"),
    ("software_put", codes.PUT, p("/sw/T"), MethodNotAllowed, "4.05"),
]


@pytest.mark.parametrize("method,segments,error,dotted_code", [case[1:] for case in REJECTED],
                         ids=[case[0] for case in REJECTED])
def test_route_rejects_with_coap_error(method, segments, error, dotted_code):
    with pytest.raises(error) as info:
        route(method, segments)
    assert codes.dotted(info.value.code) == dotted_code
    assert info.value.reason  # a diagnostic is always given


def test_unknown_path_is_4_04_even_for_unsupported_method():
    with pytest.raises(NotFound):
        route(codes.PUT, p("/nowhere"))


def test_unsupported_method_is_4_05_before_malformed_path_4_00():
    with pytest.raises(MethodNotAllowed):
        route(codes.DELETE, p("/api/v1/T/bogus"))


def test_unknown_feature_reason_is_truncated():
    with pytest.raises(BadRequest) as info:
        route(codes.POST, ("api", "v1", "T", "x" * 500))
    assert len(info.value.reason) < 100


def test_not_found_reason_is_truncated():
    with pytest.raises(NotFound) as info:
        route(codes.GET, ("x" * 500,))
    assert len(info.value.reason) < 100


def test_multiple_options_are_not_split_on_slashes():
    # Only a *single* Uri-Path option holding slashes is split (ThingsBoard quirk).
    with pytest.raises(NotFound):
        route(codes.POST, ("api/v1", "T", "telemetry"))


def test_split_path_only_splits_a_single_segment():
    assert routes.split_path(["/api/v1/T/telemetry"]) == ("api", "v1", "T", "telemetry")
    assert routes.split_path(["api", "v1"]) == ("api", "v1")
    assert routes.split_path(["telemetry"]) == ("telemetry",)


# -- plain_uplink: the edge's fast path asks it, and it agrees with route ---------------------

PLAIN = [
    ("telemetry", codes.POST, (b"api", b"v1", b"T", b"telemetry"), ("T", "telemetry")),
    ("attributes", codes.POST, (b"api", b"v1", b"AbC", b"attributes"), ("AbC", "attributes")),
    ("utf8_token", codes.POST, (b"api", b"v1", "\u00e9t\u00e9".encode(), b"telemetry"),
     ("\u00e9t\u00e9", "telemetry")),
]
NOT_PLAIN = [
    ("get_attributes", codes.GET, (b"api", b"v1", b"T", b"attributes")),
    ("put", codes.PUT, (b"api", b"v1", b"T", b"telemetry")),
    ("claim", codes.POST, (b"api", b"v1", b"T", b"claim")),
    ("rpc_reply", codes.POST, (b"api", b"v1", b"T", b"rpc")),
    ("upper_case_feature", codes.POST, (b"api", b"v1", b"T", b"TELEMETRY")),
    ("empty_token", codes.POST, (b"api", b"v1", b"", b"telemetry")),
    ("token_not_utf8", codes.POST, (b"api", b"v1", b"\xff\xfe", b"telemetry")),
    ("wrong_version", codes.POST, (b"api", b"v2", b"T", b"telemetry")),
    ("wrong_root", codes.POST, (b"API", b"v1", b"T", b"telemetry")),
    ("certificate_form", codes.POST, (b"api", b"v1", b"telemetry")),
    ("longer", codes.POST, (b"api", b"v1", b"T", b"telemetry", b"x")),
    ("one_option_with_slashes", codes.POST, (b"/api/v1/T/telemetry",)),
    ("empty", codes.POST, ()),
]


@pytest.mark.parametrize("method,segments,expected", [case[1:] for case in PLAIN],
                         ids=[case[0] for case in PLAIN])
def test_plain_uplink_recognises_token_telemetry_and_attributes_posts(method, segments,
                                                                       expected):
    assert routes.plain_uplink(method, segments) == expected
    token, feature = expected
    assert route(method, [s.decode() for s in segments]) == Route(feature, token=token)


@pytest.mark.parametrize("method,segments", [case[1:] for case in NOT_PLAIN],
                         ids=[case[0] for case in NOT_PLAIN])
def test_plain_uplink_leaves_every_other_request_to_route(method, segments):
    assert routes.plain_uplink(method, segments) is None


@pytest.mark.parametrize("method,segments", [case[1:3] for case in ACCEPTED + REJECTED],
                         ids=[case[0] for case in ACCEPTED + REJECTED])
def test_plain_uplink_agrees_with_route_on_every_table_case(method, segments):
    plain = routes.plain_uplink(method, [s.encode() for s in segments])
    if plain is not None:
        assert route(method, segments) == Route(plain[1], token=plain[0])


# -- session_uplink: the token-less plain uplink over a DTLS session, agreeing with route ------

@pytest.mark.parametrize("segments, expected", [
    ((b"api", b"v1", b"telemetry"), "telemetry"),
    ((b"api", b"v1", b"attributes"), "attributes"),
    ((b"api", b"v1", b"claim"), None),
    ((b"api", b"v1", b"TELEMETRY"), None),  # route's case-insensitive match takes it
    ((b"api", b"v2", b"telemetry"), None),
    ((b"api", b"v1", b"T", b"telemetry"), None),  # a token: the credential check decides
    ((b"/api/v1/telemetry",), None),
])
def test_session_uplink_recognises_the_token_less_telemetry_and_attributes_posts(segments,
                                                                                 expected):
    assert routes.session_uplink(codes.POST, segments) == expected
    assert routes.session_uplink(codes.GET, segments) is None
    if expected is not None:
        assert route(codes.POST, [s.decode() for s in segments]) == Route(expected)


@pytest.mark.parametrize("method,segments", [case[1:3] for case in ACCEPTED + REJECTED],
                         ids=[case[0] for case in ACCEPTED + REJECTED])
def test_session_uplink_agrees_with_route_on_every_table_case(method, segments):
    feature = routes.session_uplink(method, [s.encode() for s in segments])
    if feature is not None:
        assert route(method, segments) == Route(feature)
