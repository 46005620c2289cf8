// TLS contexts for the worker protocol (kj-tls over OpenSSL).
//
// Both functions read PEM files and return a kj::TlsContext that owns the keys
// and certificates it was built from (kj's Options only borrow them), so the
// caller keeps just the returned Own. The context must outlive every stream it
// wrapped and every listener or network it wrapped.
//
// kj-tls facts worth knowing (Cap'n Proto 0.9.2 with OpenSSL 3, checked by
// tests/simworker/tls_test.cc and by hand; see docs/worker-protocol.md):
// - The client checks the server certificate with X509_VERIFY_PARAM_set1_host,
//   which matches DNS names only (SAN dNSName), never an iPAddress SAN:
//   connecting to 127.0.0.1 with server name "127.0.0.1" fails with "TLS
//   peer's certificate is not trusted; reason = hostname mismatch" even when
//   the certificate has IP:127.0.0.1. Use one of the certificate's DNS names
//   ("localhost") as the server name. The name is also sent as SNI.
// - TlsContext::wrapPort() handshakes accepted connections concurrently; a
//   failed handshake is logged by kj (KJ_LOG ERROR "error accepting tls
//   connection") and does not stop the accept loop, so wrapPort() +
//   capnp::TwoPartyServer::listen() is safe. Without an accept timeout, a
//   client that connects and never speaks holds its socket forever: servers
//   should pass ServerTlsOptions::timer.
// - Certificates and keys are parsed when the context is built, so a bad file
//   fails at start-up, not on the first connection.
#pragma once

#include <kj/compat/tls.h>
#include <kj/memory.h>
#include <kj/time.h>

#include <string>

namespace ferry::rpc {

struct ServerTlsOptions {
  // When set, a client that has not finished its handshake within
  // `accept_timeout` is dropped (kj's acceptTimeout). The timer must outlive
  // the context.
  kj::Timer* timer = nullptr;
  kj::Duration accept_timeout = 10 * kj::SECONDS;
};

// A server context presenting the certificate chain in `cert_pem_file` (leaf
// first, then intermediates) with the private key in `key_pem_file`
// (unencrypted PEM). TLS 1.2 is the minimum. Clients are not asked for
// certificates: workers authenticate with their token.
// Throws ferry::Error kBadInput naming the file that cannot be read or parsed.
kj::Own<kj::TlsContext> MakeServerTlsContext(const std::string& cert_pem_file,
                                             const std::string& key_pem_file,
                                             const ServerTlsOptions& options = {});

// A client context. With `ca_pem_file` non-empty, only the CA certificate(s)
// in that file are trusted (a bundle of several is fine), not the system
// store; with it empty, the system trust store. TLS 1.2 is the minimum.
// Throws ferry::Error kBadInput naming the file that cannot be read or parsed.
kj::Own<kj::TlsContext> MakeClientTlsContext(const std::string& ca_pem_file);

}  // namespace ferry::rpc
