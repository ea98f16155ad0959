/*
 * kvload: the compiled load generator of `kvwire bench --generator native`.
 *
 * The Python generator costs about as much CPU per request as the node it
 * loads, and both share the machine; this one costs a fraction of that, as
 * redis-benchmark does for redis-server, so a one-node run measures the node.
 * It knows nothing of msgpack: Python encodes every request frame beforehand
 * (bench/native.py), and a reply is judged by its op, read at the fixed place
 * where kvwire's encoder writes it (op first).
 *
 * kvload FRAMES HELLO REPLY_OP CONNECTIONS WARMUP_S DURATION_S HOST PORT [HOST PORT...]
 *
 *   FRAMES    a file of complete request frames, one per key; each request
 *             picks one at random (uniform)
 *   HELLO     a file holding one HELLO frame each connection sends first, or empty
 *   REPLY_OP  the op of a successful reply (0x83 GET_REPLY, ...); an ERROR
 *             NOT_FOUND is an answer too (counted apart), any other reply an error
 *
 * Closed loop, one request in flight per connection; connections are spread
 * over the endpoints round-robin (HOST without brackets, as Python splits it).
 * It counts as the Python generator does (bench/load_connection.py): only
 * answers are operations, with a latency; error replies are counted by their
 * code, read where kvwire's encoder writes it (after op and id); a request in
 * flight on a lost connection is an error ("lost_in_flight"), and the
 * connection is dialled again after 50 ms (failures counted, not fatal), so a
 * node restarted mid-run is loaded again.
 * It prints "measuring" when the warm-up ends, "measured" when the measured
 * window does, then one line of JSON once the replies still in flight are in
 * (at most 2 s later); "unanswered" counts requests whose reply had not come
 * by then. Exit status 1 when it cannot run (bad arguments,
 * a connection refused at the start, a HELLO refused at the start).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNECTIONS 10000
#define OP_HELLO_REPLY 0x81
#define OP_ERROR 0x80
#define CODE_NOT_FOUND 1
#define OTHER_ERROR 256 /* errors_by_code's slot for replies that are neither ERROR nor REPLY_OP */
#define RECONNECT_NS 50000000ull /* as the Python generator: a lost connection is dialled again after 50 ms */
#define CONNECT_TIMEOUT_NS 5000000000ull

/* Latency histogram in microseconds: exact below 1,024 us, then 512 buckets
 * per power of two (under 0.2 % error), up to 2^41 us. */
#define SUB_BUCKETS 512
#define BUCKETS (SUB_BUCKETS * 34)
static uint64_t histogram[BUCKETS];
static uint64_t histogram_total;

static int bucket_of(uint64_t us) {
    if (us < 2 * SUB_BUCKETS) return (int)us;
    int shift = 64 - __builtin_clzll(us) - 10; /* us >> shift lies in [512, 1023] */
    int index = shift * SUB_BUCKETS + (int)(us >> shift);
    return index < BUCKETS ? index : BUCKETS - 1;
}

static uint64_t value_of(int index) {
    if (index < 2 * SUB_BUCKETS) return (uint64_t)index;
    int shift = index / SUB_BUCKETS - 1;
    return (uint64_t)(index - shift * SUB_BUCKETS) << shift;
}

static double percentile_ms(double fraction) {
    if (histogram_total == 0) return 0.0;
    uint64_t wanted = (uint64_t)(fraction * (double)histogram_total + 0.999999), seen = 0;
    if (wanted == 0) wanted = 1;
    for (int i = 0; i < BUCKETS; i++) {
        seen += histogram[i];
        if (seen >= wanted) return (double)value_of(i) / 1000.0;
    }
    return (double)value_of(BUCKETS - 1) / 1000.0;
}

typedef struct {
    int fd;
    const uint8_t *out; /* the frame being sent */
    size_t out_length, out_sent;
    uint8_t *in;
    size_t in_length, in_capacity;
    uint64_t sent_ns;
    int greeting;   /* HELLO sent, its reply awaited */
    int in_flight;  /* a request (or the HELLO) awaits its reply */
    int watching_out; /* EPOLLOUT armed: a frame is partly sent */
    int open;       /* connected and registered with epoll */
    int connecting; /* a non-blocking connect in progress (a redial) */
    int redialed;   /* past its first connection: a refusal is counted, not fatal */
    int endpoint;
    uint64_t retry_at; /* closed: when to dial again (0: not to); connecting: when to give up */
} Connection;

typedef struct {
    struct sockaddr_storage address; /* the address the first connection reached */
    socklen_t length;
    const char *host, *port;
} Endpoint;

static Connection connections[MAX_CONNECTIONS];
static Endpoint *endpoints;
static int connection_count;
static int waiting_to_dial; /* connections closed with a retry_at, or connecting */
static const uint8_t **frames;
static uint32_t *frame_lengths;
static size_t frame_count;
static const uint8_t *hello;
static size_t hello_length;
static int reply_op, epoll_fd;
static int measuring, stopping, draining;
#define DRAIN_S 2.0 /* after the window, how long replies still in flight are awaited */
static uint64_t ops, errors, connections_lost, unanswered, not_found, lost_in_flight, connect_failures;
static uint64_t errors_by_code[OTHER_ERROR + 1];
static uint64_t random_state = 0x9E3779B97F4A7C15ull;

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static uint64_t next_random(void) { /* xorshift64 */
    random_state ^= random_state << 13;
    random_state ^= random_state >> 7;
    random_state ^= random_state << 17;
    return random_state;
}

static void fail(const char *what) {
    fprintf(stderr, "kvload: %s\n", what);
    exit(1);
}

static uint8_t *read_file(const char *path, size_t *length) {
    FILE *file = fopen(path, "rb");
    if (!file) { perror(path); exit(1); }
    struct stat info;
    if (fstat(fileno(file), &info) != 0) { perror(path); exit(1); }
    *length = (size_t)info.st_size;
    uint8_t *data = malloc(*length ? *length : 1);
    if (!data || fread(data, 1, *length, file) != *length) fail("cannot read a frames file");
    fclose(file);
    return data;
}

static uint32_t frame_length(const uint8_t *header) {
    return ((uint32_t)header[0] << 24) | ((uint32_t)header[1] << 16) | ((uint32_t)header[2] << 8) | header[3];
}

static void load_frames(const char *path) {
    size_t length, offset = 0, capacity = 1024;
    uint8_t *data = read_file(path, &length);
    frames = malloc(capacity * sizeof *frames);
    frame_lengths = malloc(capacity * sizeof *frame_lengths);
    while (offset + 4 <= length) {
        uint32_t size = 4 + frame_length(data + offset);
        if (offset + size > length) fail("the frames file ends inside a frame");
        if (frame_count == capacity) {
            capacity *= 2;
            frames = realloc(frames, capacity * sizeof *frames);
            frame_lengths = realloc(frame_lengths, capacity * sizeof *frame_lengths);
        }
        frames[frame_count] = data + offset;
        frame_lengths[frame_count++] = size;
        offset += size;
    }
    if (frame_count == 0 || offset != length) fail("the frames file holds no whole frames");
}

static void watch(Connection *c, uint32_t events) {
    struct epoll_event event = {.events = events, .data.ptr = c};
    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c->fd, &event);
}

static void close_connection(Connection *c) {
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->open = c->connecting = c->in_flight = c->greeting = c->watching_out = 0;
    c->in_length = c->out_length = c->out_sent = 0;
}

static void dial_later(Connection *c) {
    c->retry_at = now_ns() + RECONNECT_NS;
    waiting_to_dial++;
}

/* A connect or HELLO that failed after the start: counted in the window, and tried again. */
static void dial_failed(Connection *c) {
    if (measuring) connect_failures++;
    close_connection(c);
    if (!stopping) dial_later(c);
}

static void lose(Connection *c) {
    if (!c->open) return;
    if (c->greeting && c->redialed) { dial_failed(c); return; } /* closed before answering a redial's HELLO */
    connections_lost++;
    if (c->in_flight && !c->greeting) {
        if (measuring) { errors++; lost_in_flight++; } /* as the Python generator's "connection lost" */
        else if (draining) unanswered++;
    }
    close_connection(c);
    if (!stopping) dial_later(c);
}

static void flush(Connection *c) {
    while (c->out_sent < c->out_length) {
        ssize_t n = send(c->fd, c->out + c->out_sent, c->out_length - c->out_sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->watching_out) { c->watching_out = 1; watch(c, EPOLLIN | EPOLLOUT); }
                return;
            }
            if (errno == EINTR) continue;
            lose(c);
            return;
        }
        c->out_sent += (size_t)n;
    }
    if (c->watching_out) { c->watching_out = 0; watch(c, EPOLLIN); } /* no epoll_ctl per request */
}

static void send_frame(Connection *c, const uint8_t *frame, size_t length) {
    c->out = frame;
    c->out_length = length;
    c->out_sent = 0;
    c->sent_ns = now_ns();
    c->in_flight = 1;
    flush(c);
}

static void send_request(Connection *c) {
    size_t index = (size_t)(next_random() % frame_count);
    send_frame(c, frames[index], frame_lengths[index]);
}

/* The op of a reply payload: kvwire writes "op" first, as a positive fixint or uint 8. */
static int op_of(const uint8_t *payload, size_t length) {
    size_t at;
    if (length < 6) return -1;
    if ((payload[0] & 0xF0) == 0x80) at = 1;
    else if (payload[0] == 0xDE) at = 3;
    else if (payload[0] == 0xDF) at = 5;
    else return -1;
    if (length < at + 5 || memcmp(payload + at, "\xa2op", 3) != 0) return -1;
    at += 3;
    if (payload[at] < 0x80) return payload[at];
    if (payload[at] == 0xCC) return payload[at + 1];
    return -1;
}

/* The code of an ERROR reply: kvwire writes op, id, then code (a positive fixint
 * or uint 8), before the message; OTHER_ERROR when it is not found there. */
static int code_of(const uint8_t *payload, size_t length) {
    size_t scan = length < 40 ? length : 40;
    const uint8_t *key = memmem(payload, scan, "\xa4" "code", 5);
    if (!key) return OTHER_ERROR;
    size_t at = (size_t)(key - payload) + 5;
    if (at < length && payload[at] < 0x80) return payload[at];
    if (at + 1 < length && payload[at] == 0xCC) return payload[at + 1];
    return OTHER_ERROR;
}

/* An ERROR without an id (kvwire writes "id" after op, as nil) is the node's word on
 * the whole connection (a frame over its limit, say): it closes the connection next. */
static int refuses_connection(int op, const uint8_t *payload, size_t length) {
    return op == OP_ERROR && memmem(payload, length < 40 ? length : 40, "\xa2" "id" "\xc0", 4) != NULL;
}

/* The start's HELLO refused: exit 1 with the node's own message when it sent an
 * ERROR (its msgpack str after "message"), so a node at its connection limit is
 * not taken for a wrong token. */
static void refused_hello(int op, const uint8_t *payload, size_t length) {
    const uint8_t *key = op == OP_ERROR ? memmem(payload, length, "\xa7" "message", 8) : NULL;
    size_t at = key ? (size_t)(key - payload) + 8 : length, size = 0;
    if (at < length && (payload[at] & 0xE0) == 0xA0) { size = payload[at] & 0x1F; at += 1; }
    else if (at + 1 < length && payload[at] == 0xD9) { size = payload[at + 1]; at += 2; }
    else if (at + 2 < length && payload[at] == 0xDA) { size = ((size_t)payload[at + 1] << 8) | payload[at + 2]; at += 3; }
    if (size == 0 || at + size > length) fail("the node refused HELLO (a wrong token, or not a kvwire node?)");
    fprintf(stderr, "kvload: the node refused HELLO: %.*s\n", (int)size, (const char *)payload + at);
    exit(1);
}

static void answered(Connection *c, const uint8_t *payload, size_t length) {
    int op = op_of(payload, length);
    if (!c->in_flight) return; /* sent unasked (an ERROR with no id): nothing to answer */
    c->in_flight = 0;
    if (c->greeting) {
        if (op != OP_HELLO_REPLY) {
            if (!c->redialed) refused_hello(op, payload, length);
            dial_failed(c);
            return;
        }
        c->greeting = 0;
    } else if (measuring) {
        int code = op == OP_ERROR ? code_of(payload, length) : OTHER_ERROR;
        if (op == reply_op || code == CODE_NOT_FOUND) { /* an answer: NOT_FOUND too, as in Python */
            uint64_t us = (now_ns() - c->sent_ns + 999) / 1000;
            histogram[bucket_of(us)]++;
            histogram_total++;
            ops++;
            if (op != reply_op) not_found++;
        } else {
            errors++;
            errors_by_code[code]++;
        }
    }
    /* Nothing more on a connection the node is closing: a request sent now would be
     * counted again, as lost with it; it is dialled again once closed. */
    if (!stopping && !refuses_connection(op, payload, length)) send_request(c);
}

static void receive(Connection *c) {
    int closed = 0;
    for (;;) {
        if (c->in_capacity - c->in_length < 65536) {
            c->in_capacity = c->in_capacity * 2 + 65536;
            c->in = realloc(c->in, c->in_capacity);
            if (!c->in) fail("out of memory");
        }
        ssize_t n = recv(c->fd, c->in + c->in_length, c->in_capacity - c->in_length, 0);
        if (n == 0) { closed = 1; break; } /* the replies read before the close still count */
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            closed = 1;
            break;
        }
        c->in_length += (size_t)n;
    }
    size_t offset = 0;
    while (c->in_length - offset >= 4) {
        size_t size = 4 + (size_t)frame_length(c->in + offset);
        if (c->in_length - offset < size) break;
        answered(c, c->in + offset + 4, size - 4);
        offset += size;
        if (!c->open) return;
    }
    memmove(c->in, c->in + offset, c->in_length - offset);
    c->in_length -= offset;
    if (closed) lose(c);
}

static void tune(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* connect(), but given up at `deadline`: a node whose listen backlog is full
 * never completes one, and the kernel's own SYN retries take over 2 minutes.
 * ETIMEDOUT when the deadline passed. */
static int connect_by(int fd, const struct sockaddr *address, socklen_t length, uint64_t deadline) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (connect(fd, address, length) == 0) return 0;
    if (errno != EINPROGRESS) return -1;
    struct pollfd writable = {.fd = fd, .events = POLLOUT};
    for (;;) {
        uint64_t now = now_ns();
        if (now >= deadline) { errno = ETIMEDOUT; return -1; }
        int ready = poll(&writable, 1, (int)((deadline - now) / 1000000) + 1);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) return -1;
        if (ready == 0) continue; /* the loop's check says whether the deadline passed */
        int error = 0;
        socklen_t size = sizeof error;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size) != 0) return -1;
        if (error != 0) { errno = error; return -1; }
        return 0;
    }
}

/* The first connection to an endpoint: any failure ends the run (exit 1), as
 * does no connection by `deadline` (the Python generator's 5 s). The address
 * reached is kept for redials, which do not resolve again. */
static int dial(Endpoint *endpoint, uint64_t deadline) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *found, *each;
    int status = getaddrinfo(endpoint->host, endpoint->port, &hints, &found);
    if (status != 0) {
        fprintf(stderr, "kvload: cannot resolve %s: %s\n", endpoint->host, gai_strerror(status));
        exit(1);
    }
    int fd = -1, error = 0;
    for (each = found; each; each = each->ai_next) { /* as Python does: every address in turn */
        fd = socket(each->ai_family, SOCK_STREAM, 0);
        if (fd >= 0 && connect_by(fd, each->ai_addr, each->ai_addrlen, deadline) == 0) {
            memcpy(&endpoint->address, each->ai_addr, each->ai_addrlen);
            endpoint->length = each->ai_addrlen;
            break;
        }
        error = errno;
        if (fd >= 0) close(fd);
        fd = -1;
    }
    freeaddrinfo(found);
    if (fd < 0 && error == ETIMEDOUT) {
        fprintf(stderr, "kvload: cannot connect to %s:%s: no connection within %.0f s\n", endpoint->host,
                endpoint->port, CONNECT_TIMEOUT_NS / 1e9);
        exit(1);
    }
    if (fd < 0) {
        fprintf(stderr, "kvload: cannot connect to %s:%s: %s\n", endpoint->host, endpoint->port, strerror(error));
        exit(1);
    }
    tune(fd);
    return fd;
}

/* The first request on a connection just made: its HELLO, or a request when there is none. */
static void greet(Connection *c) {
    if (hello_length) {
        c->greeting = 1;
        send_frame(c, hello, hello_length);
    } else {
        send_request(c);
    }
}

/* Dial a lost connection again, without blocking: finished in connected() once writable. */
static void redial(Connection *c) {
    Endpoint *endpoint = &endpoints[c->endpoint];
    waiting_to_dial--;
    c->retry_at = 0;
    c->redialed = 1;
    c->fd = socket(endpoint->address.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) { if (measuring) connect_failures++; dial_later(c); return; }
    if (connect(c->fd, (struct sockaddr *)&endpoint->address, endpoint->length) != 0 && errno != EINPROGRESS) {
        if (measuring) connect_failures++;
        close(c->fd);
        dial_later(c);
        return;
    }
    c->connecting = 1;
    c->retry_at = now_ns() + CONNECT_TIMEOUT_NS;
    waiting_to_dial++;
    struct epoll_event event = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, c->fd, &event);
}

static void connected(Connection *c) {
    int error = 0;
    socklen_t size = sizeof error;
    waiting_to_dial--;
    c->connecting = 0;
    c->retry_at = 0;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &size) != 0 || error != 0 || stopping) {
        if (stopping) close_connection(c);
        else dial_failed(c);
        return;
    }
    tune(c->fd);
    c->open = 1;
    watch(c, EPOLLIN);
    greet(c);
}

/* Redials that are due, and connects that took too long. */
static void dial_due(uint64_t now) {
    for (int i = 0; i < connection_count && waiting_to_dial > 0; i++) {
        Connection *c = &connections[i];
        if (!c->retry_at || now < c->retry_at) continue;
        if (c->connecting) { waiting_to_dial--; c->connecting = 0; c->retry_at = 0; dial_failed(c); }
        else if (!c->open) redial(c);
    }
}

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + (double)usage.ru_stime.tv_sec +
           usage.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 9 || (argc - 7) % 2 != 0)
        fail("usage: kvload FRAMES HELLO REPLY_OP CONNECTIONS WARMUP_S DURATION_S HOST PORT [HOST PORT...]");
    load_frames(argv[1]);
    hello = read_file(argv[2], &hello_length);
    reply_op = atoi(argv[3]);
    int count = atoi(argv[4]), endpoint_count = (argc - 7) / 2;
    double warmup = atof(argv[5]), duration = atof(argv[6]);
    if (count < 1 || count > MAX_CONNECTIONS) fail("CONNECTIONS must be 1-10000");
    if (!(warmup >= 0 && duration > 0)) fail("WARMUP_S must be >= 0 and DURATION_S > 0");
    connection_count = count;
    endpoints = calloc((size_t)endpoint_count, sizeof *endpoints);
    if (!endpoints) fail("out of memory");
    for (int e = 0; e < endpoint_count; e++) {
        endpoints[e].host = argv[7 + 2 * e];
        endpoints[e].port = argv[8 + 2 * e];
    }
    epoll_fd = epoll_create1(0);
    uint64_t dial_deadline = now_ns() + CONNECT_TIMEOUT_NS; /* one for all: the dials are made in turn */
    for (int i = 0; i < count; i++) {
        Connection *c = &connections[i];
        c->endpoint = i % endpoint_count;
        c->fd = dial(&endpoints[c->endpoint], dial_deadline);
        c->open = 1;
        struct epoll_event event = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epoll_fd, EPOLL_CTL_ADD, c->fd, &event);
    }
    for (int i = 0; i < count; i++) greet(&connections[i]);
    uint64_t started = now_ns();
    uint64_t measure_at = started + (uint64_t)(warmup * 1e9), end_at = measure_at + (uint64_t)(duration * 1e9);
    double cpu_at_start = 0;
    struct epoll_event events[256];
    double window = 0, cpu = 0;
    for (;;) {
        uint64_t now = now_ns();
        if (!measuring && !draining && now >= measure_at) {
            measuring = 1;
            cpu_at_start = cpu_seconds();
            printf("measuring\n");
            fflush(stdout);
        }
        if (!draining && now >= end_at) {
            /* The window ends: send nothing more, and wait a while for what is in flight. */
            window = measuring ? (double)(now - measure_at) / 1e9 : 0;
            cpu = measuring ? cpu_seconds() - cpu_at_start : 0;
            measuring = 0;
            stopping = draining = 1;
            end_at = now + (uint64_t)(DRAIN_S * 1e9);
            printf("measured\n"); /* now, not after the drain: the caller samples the machine's CPU over the window */
            fflush(stdout);
        }
        if (draining) {
            int waiting = 0;
            for (int i = 0; i < count; i++) waiting |= connections[i].open && connections[i].in_flight;
            if (!waiting || now >= end_at) break;
        }
        if (waiting_to_dial > 0 && !stopping) dial_due(now);
        uint64_t next = (measuring || draining) ? end_at : measure_at;
        int timeout_ms = (int)((next - now) / 1000000) + 1;
        int ready = epoll_wait(epoll_fd, events, 256, timeout_ms > 10 ? 10 : timeout_ms);
        for (int i = 0; i < ready; i++) {
            Connection *c = events[i].data.ptr;
            if (c->connecting) { connected(c); continue; }
            if (!c->open) continue;
            if (events[i].events & EPOLLOUT) flush(c);
            if (c->open && (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) receive(c);
        }
    }
    for (int i = 0; i < count; i++) /* no reply within the drain */
        if (connections[i].open && connections[i].in_flight && !connections[i].greeting) unanswered++;
    printf("{\"ops\": %llu, \"errors\": %llu, \"error_codes\": {", (unsigned long long)ops, (unsigned long long)errors);
    const char *separator = "";
    for (int code = 0; code <= OTHER_ERROR; code++) {
        if (!errors_by_code[code]) continue;
        printf("%s\"%d\": %llu", separator, code, (unsigned long long)errors_by_code[code]);
        separator = ", ";
    }
    printf("}, \"lost_in_flight\": %llu, \"not_found\": %llu, \"window_s\": %.6f, \"client_cpu_s\": %.6f, "
           "\"connections_lost\": %llu, \"connect_failures\": %llu, \"unanswered\": %llu, "
           "\"latency_ms\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p999\": %.3f, \"max\": %.3f}}\n",
           (unsigned long long)lost_in_flight, (unsigned long long)not_found, window, cpu,
           (unsigned long long)connections_lost, (unsigned long long)connect_failures, (unsigned long long)unanswered,
           percentile_ms(0.5), percentile_ms(0.9), percentile_ms(0.99), percentile_ms(0.999), percentile_ms(1.0));
    return 0;
}
