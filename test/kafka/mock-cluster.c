/*
 * A Kafka-protocol broker for the integration suites: librdkafka's mock cluster (librdkafka-dev).
 *
 *   mock-cluster [-c CONTROL_FIFO] [BROKERS [TOPIC:PARTITIONS ...]]     (BROKERS defaults to 3)
 *
 * Prints the bootstrap list ("127.0.0.1:PORT,...") on one line, then serves until standard input
 * reaches EOF (the parent holds a pipe: the cluster dies with it) or SIGTERM/SIGINT. Topics the
 * clients auto-create get the mock's default of 4 partitions (fixed in librdkafka, not settable).
 *
 * Lines on standard input, or written to CONTROL_FIFO (which any process may write), drive the
 * cluster; the reply ("ok" or "error: ...") goes to stdout:
 *   topic NAME PARTITIONS    create a topic         down ID | up ID   a broker (-1: all)
 *   rtt ID MS                broker round-trip delay
 *   errors APIKEY COUNT CODE the next COUNT requests of APIKEY (11: JoinGroup) fail with error CODE
 *
 * Build: gcc -O2 -o mock-cluster test/kafka/mock-cluster.c -lrdkafka
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static rd_kafka_mock_cluster_t *mc;
static int replicas = 1;

static void command(char *line) {
        char name[256];
        int a, b, c;
        rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__INVALID_ARG;
        if (sscanf(line, "topic %255s %d", name, &a) == 2) err = rd_kafka_mock_topic_create(mc, name, a, replicas);
        else if (sscanf(line, "down %d", &a) == 1) err = rd_kafka_mock_broker_set_down(mc, a);
        else if (sscanf(line, "up %d", &a) == 1) err = rd_kafka_mock_broker_set_up(mc, a);
        else if (sscanf(line, "rtt %d %d", &a, &b) == 2) err = rd_kafka_mock_broker_set_rtt(mc, a, b);
        else if (sscanf(line, "errors %d %d %d", &a, &b, &c) == 3 && b > 0 && b <= 1000) {
                rd_kafka_resp_err_t errors[1000];
                for (int i = 0; i < b; i++) errors[i] = (rd_kafka_resp_err_t)c;
                rd_kafka_mock_push_request_errors_array(mc, (int16_t)a, (size_t)b, errors);
                err = RD_KAFKA_RESP_ERR_NO_ERROR;
        }
        if (err) printf("error: %s: %s\n", line, rd_kafka_err2str(err));
        else printf("ok\n");
        fflush(stdout);
}

/* Reads what is there on fd and runs each complete line. Returns -1 at EOF. */
struct source { int fd; size_t len; char buf[1024]; };
static int drain(struct source *s) {
        ssize_t n = read(s->fd, s->buf + s->len, sizeof(s->buf) - 1 - s->len);
        if (n == 0) return -1;
        if (n < 0) return errno == EINTR || errno == EAGAIN ? 0 : -1;
        s->len += (size_t)n;
        char *nl;
        while ((nl = memchr(s->buf, '\n', s->len))) {
                *nl = '\0';
                command(s->buf);
                s->len -= (size_t)(nl + 1 - s->buf);
                memmove(s->buf, nl + 1, s->len);
        }
        if (s->len == sizeof(s->buf) - 1) s->len = 0; /* an overlong line: drop it */
        return 0;
}

int main(int argc, char **argv) {
        char errstr[512];
        struct source in = {.fd = 0}, ctl = {.fd = -1};
        int arg = 1;
        if (argc > 2 && !strcmp(argv[1], "-c")) {
                /* O_RDWR: we are a writer too, so the FIFO never reads EOF between writers. */
                if ((ctl.fd = open(argv[2], O_RDWR | O_NONBLOCK)) < 0) { perror(argv[2]); return 1; }
                arg = 3;
        }
        int brokers = argc > arg ? atoi(argv[arg]) : 3;

        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)); /* the host client idles */
        rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
        if (!rk) { fprintf(stderr, "mock-cluster: rd_kafka_new: %s\n", errstr); return 1; }
        if (brokers < 1 || !(mc = rd_kafka_mock_cluster_new(rk, brokers))) {
                fprintf(stderr, "mock-cluster: could not create %d brokers\n", brokers);
                return 1;
        }
        replicas = brokers < 3 ? brokers : 3;

        for (int i = arg + 1; i < argc; i++) {
                char *colon = strrchr(argv[i], ':');
                int partitions = colon ? atoi(colon + 1) : 4;
                if (colon) *colon = '\0';
                rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mc, argv[i], partitions, replicas);
                if (err) fprintf(stderr, "mock-cluster: topic %s: %s\n", argv[i], rd_kafka_err2str(err));
        }

        struct sigaction sa = {0};
        sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);

        printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
        fflush(stdout);

        while (!stop) {
                struct pollfd fds[2] = {{.fd = in.fd, .events = POLLIN}, {.fd = ctl.fd, .events = POLLIN}};
                int n = poll(fds, ctl.fd >= 0 ? 2 : 1, 500);
                if (n < 0 && errno != EINTR) break;
                if (n <= 0) continue;
                if (fds[0].revents && drain(&in) < 0) break; /* EOF: the parent is gone */
                if (ctl.fd >= 0 && fds[1].revents) drain(&ctl);
        }

        rd_kafka_mock_cluster_destroy(mc);
        rd_kafka_destroy(rk);
        return 0;
}
