from concurrent import futures

import grpc
import pytest

from fedfm.errors import ConfigError
from fedfm.runtime.remote import fedfm_pb2 as pb
from fedfm.runtime.remote import fedfm_pb2_grpc as pb_grpc
from fedfm.runtime.remote.security import (
    add_client,
    check_token,
    client_certificate,
    make_tls,
    read_credentials,
)


def test_tokens_are_issued_checked_and_revoked(tmp_path):
    token = add_client(tmp_path, "clinic-1", tmp_path / "c1.json")
    assert read_credentials(tmp_path / "c1.json") == ("clinic-1", token)
    assert check_token(tmp_path, "clinic-1", token)
    assert not check_token(tmp_path, "clinic-1", token + "x")
    assert not check_token(tmp_path, "clinic-2", token)
    assert token not in (tmp_path / "clients.json").read_text()  # only the hash is kept
    new = add_client(tmp_path, "clinic-1", tmp_path / "c1.json")
    assert check_token(tmp_path, "clinic-1", new) and not check_token(tmp_path, "clinic-1", token)


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "../etc"])
def test_client_ids_are_checked(tmp_path, bad):
    with pytest.raises(ConfigError, match="must be 1-64 letters"):
        add_client(tmp_path, bad, tmp_path / "c.json")


def test_a_broken_credentials_file_is_a_clear_error(tmp_path):
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a credentials file"):
        read_credentials(tmp_path / "c.json")


class _Echo(pb_grpc.FederationServicer):
    def Join(self, request, context):  # noqa: N802 (gRPC's name)
        return pb.JoinReply(accepted=True, session=request.client_id)


def _serve(tls, *, mutual: bool):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_FederationServicer_to_server(_Echo(), server)
    creds = grpc.ssl_server_credentials(
        [(tls.server_key.read_bytes(), tls.server_cert.read_bytes())],
        root_certificates=tls.ca_cert.read_bytes() if mutual else None,
        require_client_auth=mutual,
    )
    port = server.add_secure_port("localhost:0", creds)
    server.start()
    return server, f"localhost:{port}"


def _join(channel) -> str:
    with channel:
        stub = pb_grpc.FederationStub(channel)
        return stub.Join(pb.JoinRequest(client_id="c1"), timeout=5).session


def test_tls_admits_a_client_that_trusts_the_ca_and_refuses_plaintext_and_strangers(tmp_path):
    tls = make_tls(tmp_path / "server")
    other = make_tls(tmp_path / "other")
    server, address = _serve(tls, mutual=False)
    try:
        trusted = grpc.ssl_channel_credentials(root_certificates=tls.ca_cert.read_bytes())
        assert _join(grpc.secure_channel(address, trusted)) == "c1"
        with pytest.raises(grpc.RpcError) as err:
            _join(grpc.insecure_channel(address))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        stranger = grpc.ssl_channel_credentials(root_certificates=other.ca_cert.read_bytes())
        with pytest.raises(grpc.RpcError):
            _join(grpc.secure_channel(address, stranger))
    finally:
        server.stop(None)


def test_mutual_tls_needs_a_client_certificate_from_the_ca(tmp_path):
    tls = make_tls(tmp_path)
    cert, key = client_certificate(tmp_path, "c1")
    server, address = _serve(tls, mutual=True)
    try:
        ca = tls.ca_cert.read_bytes()
        with pytest.raises(grpc.RpcError):
            _join(grpc.secure_channel(address, grpc.ssl_channel_credentials(ca)))
        creds = grpc.ssl_channel_credentials(ca, key.read_bytes(), cert.read_bytes())
        assert _join(grpc.secure_channel(address, creds)) == "c1"
    finally:
        server.stop(None)


def test_the_admin_commands_write_tls_material_and_credentials(tmp_path, capsys):
    from fedfm.cli import main

    assert main(["admin", "init-tls", str(tmp_path), "--host", "127.0.0.1"]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"ca.pem", "ca.key", "server.pem", "server.key"}
    assert oct((tmp_path / "server.key").stat().st_mode)[-3:] == "600"
    out = tmp_path / "c9.json"
    assert (
        main(["admin", "add-client", str(tmp_path), "--id", "c9", "--out", str(out), "--cert"]) == 0
    )
    client_id, token = read_credentials(out)
    assert client_id == "c9" and check_token(tmp_path, "c9", token)
    assert (tmp_path / "client-c9.pem").is_file()
    assert main(["admin", "add-client", str(tmp_path), "--id", "a b", "--out", str(out)]) == 2
    assert "must be 1-64 letters" in capsys.readouterr().out
