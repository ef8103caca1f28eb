"""TLS with real clients: PyArrow Flight and the ADBC Flight SQL driver
verify the server certificate; a plaintext client is refused."""

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.flight as flight
import pytest
import trustme

from conftest import Server


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    srv = Server(
        tmp / "data",
        extra_args=["--tls-cert", str(tmp / "server.pem"), "--tls-key", str(tmp / "server.key")],
    )
    srv.ca_pem = (tmp / "ca.pem").read_bytes()
    yield srv
    srv.stop()


def test_pyarrow_flight_over_tls(tls_server):
    port = tls_server.addr.split(":")[1]
    client = flight.FlightClient(f"grpc+tls://localhost:{port}", tls_root_certs=tls_server.ca_pem)
    header = client.authenticate_basic_token("acme", tls_server.tokens["acme"])
    actions = [a.type for a in client.list_actions(flight.FlightCallOptions(headers=[header]))]
    assert "CreatePreparedStatement" in actions

    plain = flight.FlightClient(f"grpc://localhost:{port}")
    with pytest.raises(flight.FlightError):
        plain.authenticate_basic_token("acme", tls_server.tokens["acme"])


def test_adbc_over_tls(tls_server):
    port = tls_server.addr.split(":")[1]
    conn = flightsql.connect(
        f"grpc+tls://localhost:{port}",
        db_kwargs={
            "adbc.flight.sql.authorization_header": f"Bearer {tls_server.tokens['acme']}",
            "adbc.flight.sql.client_option.tls_root_certs": tls_server.ca_pem.decode(),
        },
        autocommit=True,
    )
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM wildedge.raw_events")
        assert cur.fetchone()[0] == 0
