/* c-ares's stub resolver as gRPC's C core and Node's resolver use it: ares_getaddrinfo with
 * the search list and ndots of /etc/resolv.conf, A and AAAA (AF_UNSPEC). One line per name
 * on stdout: "NAME ok ADDR..." or "NAME failed STATUS". */
#include <ares.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/select.h>

static void done(void *arg, int status, int timeouts, struct ares_addrinfo *result) {
  const char *name = arg;
  (void)timeouts;
  if (status != ARES_SUCCESS || result == NULL || result->nodes == NULL) {
    printf("%s failed %s\n", name, ares_strerror(status));
    if (result) ares_freeaddrinfo(result);
    return;
  }
  printf("%s ok", name);
  for (struct ares_addrinfo_node *n = result->nodes; n; n = n->ai_next) {
    char text[INET6_ADDRSTRLEN] = "";
    const void *addr = n->ai_family == AF_INET
                           ? (const void *)&((struct sockaddr_in *)n->ai_addr)->sin_addr
                           : (const void *)&((struct sockaddr_in6 *)n->ai_addr)->sin6_addr;
    inet_ntop(n->ai_family, addr, text, sizeof text);
    printf(" %s", text);
  }
  printf("\n");
  ares_freeaddrinfo(result);
}

int main(int argc, char **argv) {
  int failed = 0;
  if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS) return 2;
  for (int i = 1; i < argc; i++) {
    ares_channel channel;
    if (ares_init(&channel) != ARES_SUCCESS) return 2;
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    ares_getaddrinfo(channel, argv[i], NULL, &hints, done, argv[i]);
    for (;;) {
      fd_set readers, writers;
      FD_ZERO(&readers);
      FD_ZERO(&writers);
      int nfds = ares_fds(channel, &readers, &writers);
      if (nfds == 0) break;
      struct timeval tv, *tvp = ares_timeout(channel, NULL, &tv);
      select(nfds, &readers, &writers, NULL, tvp);
      ares_process(channel, &readers, &writers);
    }
    ares_destroy(channel);
    fflush(stdout);
  }
  ares_library_cleanup();
  return failed;
}
