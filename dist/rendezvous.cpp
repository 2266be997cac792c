#include "dist/rendezvous.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "tensor/error.h"

namespace nt::dist {
namespace {
using Clock = std::chrono::steady_clock;

struct Fd {  // closes on scope exit
  int fd = -1;
  explicit Fd(int f = -1) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
  Fd& operator=(Fd&& o) noexcept { std::swap(fd, o.fd); return *this; }
  ~Fd() { if (fd >= 0) ::close(fd); }
};

double left(Clock::time_point end) { return std::chrono::duration<double>(end - Clock::now()).count(); }

// All n bytes, or false on error/timeout.
bool io_all(int fd, void* buf, size_t n, bool send, Clock::time_point end) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    pollfd pf{fd, (short)(send ? POLLOUT : POLLIN), 0};
    const double ms = left(end) * 1000;
    if (ms <= 0 || ::poll(&pf, 1, (int)std::max(1.0, ms)) <= 0) return false;
    const ssize_t k = send ? ::send(fd, p, n, MSG_NOSIGNAL) : ::recv(fd, p, n, 0);
    if (k <= 0) return false;
    p += k, n -= (size_t)k;
  }
  return true;
}

sockaddr_in resolve(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET, hints.ai_socktype = SOCK_STREAM;
  const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  NT_CHECK(rc == 0 && res, "rendezvous: cannot resolve MASTER_ADDR '{}': {}", host, ::gai_strerror(rc));
  sockaddr_in a = *reinterpret_cast<sockaddr_in*>(res->ai_addr);
  ::freeaddrinfo(res);
  a.sin_port = htons((uint16_t)port);
  return a;
}
}  // namespace

int free_port() {
  Fd s(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET, a.sin_addr.s_addr = htonl(INADDR_LOOPBACK), a.sin_port = 0;
  NT_CHECK(s.fd >= 0 && ::bind(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "free_port: bind failed: {}", std::strerror(errno));
  socklen_t len = sizeof a;
  ::getsockname(s.fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

std::string rendezvous_tcp(const ProcessInfo& p, const std::string& blob, double timeout_s) {
  if (p.world_size == 1) return blob;
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  const std::string where = fmt::format("{}:{}", p.master_addr, p.master_port);
  if (p.rank == 0) {
    Fd ls(::socket(AF_INET, SOCK_STREAM, 0));
    const int one = 1;
    ::setsockopt(ls.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET, a.sin_addr.s_addr = htonl(INADDR_ANY), a.sin_port = htons((uint16_t)p.master_port);
    NT_CHECK(::bind(ls.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(ls.fd, p.world_size) == 0,
             "rendezvous: rank 0 cannot listen on port {}: {}", p.master_port, std::strerror(errno));
    std::vector<Fd> peers(p.world_size);
    int arrived = 1;
    while (arrived < p.world_size) {
      pollfd pf{ls.fd, POLLIN, 0};
      const double ms = left(end) * 1000;
      if (ms <= 0 || ::poll(&pf, 1, (int)std::max(1.0, ms)) <= 0) {
        std::string missing;
        for (int r = 1; r < p.world_size; ++r)
          if (peers[r].fd < 0) missing += fmt::format("{}{}", missing.empty() ? "" : ", ", r);
        throw Error(fmt::format("rendezvous: after {:g} s, rank(s) {} of {} did not reach rank 0 at {}", timeout_s, missing,
                                p.world_size, where));
      }
      Fd c(::accept(ls.fd, nullptr, nullptr));
      int32_t r = -1;
      if (c.fd < 0 || !io_all(c.fd, &r, 4, false, end)) continue;
      NT_CHECK(r > 0 && r < p.world_size && peers[r].fd < 0, "rendezvous: a peer at {} claims rank {} (world size {}, twice?)",
               where, r, p.world_size);
      peers[r] = std::move(c), ++arrived;
    }
    const uint32_t n = (uint32_t)blob.size();
    for (int r = 1; r < p.world_size; ++r)
      NT_CHECK(io_all(peers[r].fd, (void*)&n, 4, true, end) && io_all(peers[r].fd, (void*)blob.data(), n, true, end),
               "rendezvous: sending to rank {} failed", r);
    for (int r = 1; r < p.world_size; ++r) {  // each acknowledges, so nobody races ahead of a slow peer's read
      char ack = 0;
      NT_CHECK(io_all(peers[r].fd, &ack, 1, false, end), "rendezvous: rank {} did not acknowledge within {:g} s", r, timeout_s);
    }
    return blob;
  }
  const sockaddr_in a = resolve(p.master_addr, p.master_port);
  while (true) {
    Fd s(::socket(AF_INET, SOCK_STREAM, 0));
    if (::connect(s.fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) {
      const int32_t r = p.rank;
      uint32_t n = 0;
      NT_CHECK(io_all(s.fd, (void*)&r, 4, true, end) && io_all(s.fd, &n, 4, false, end) && n < (1u << 24),
               "rendezvous: rank {} reached {} but got no answer within {:g} s (are all {} ranks started?)", p.rank, where,
               timeout_s, p.world_size);
      std::string out(n, '\0');
      NT_CHECK(io_all(s.fd, out.data(), n, false, end), "rendezvous: rank {} lost rank 0 at {} mid-message", p.rank, where);
      const char ack = 1;
      io_all(s.fd, (void*)&ack, 1, true, end);
      return out;
    }
    NT_CHECK(left(end) > 0, "rendezvous: rank {} could not reach rank 0 at {} within {:g} s ({})", p.rank, where, timeout_s,
             std::strerror(errno));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::string rendezvous_file(const std::string& path, const ProcessInfo& p, const std::string& blob, double timeout_s) {
  if (p.rank == 0) {
    const std::string tmp = fmt::format("{}.tmp{}", path, ::getpid());
    {
      std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
      f.write(blob.data(), (std::streamsize)blob.size());
      NT_CHECK(f.good(), "rendezvous: cannot write '{}'", tmp);
    }
    std::filesystem::rename(tmp, path);  // atomic: the others see all of it or nothing
    return blob;
  }
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  while (!std::filesystem::exists(path)) {
    NT_CHECK(left(end) > 0, "rendezvous: rank {} waited {:g} s for rank 0's file '{}'", p.rank, timeout_s, path);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace nt::dist
