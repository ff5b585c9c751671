// Command pionturn is natkit's second TURN implementation for tests: a small
// server over pion/turn v2 (Debian's golang-github-pion-turn.v2-dev), built
// offline by tests/servers/__init__.py. It is a test tool, not a deployment.
//
// Credentials: -secret-file (coturn's REST scheme "<expiry>[:<user>]",
// password base64(HMAC-SHA1(secret, username))), -pion-rest (pion's own
// NewLongTermAuthHandler instead: a bare "<expiry>" username only) and
// -users-file (long-term "user:password" lines). Secrets never go on the
// command line.
//
// TLS: -tls-listen IP:PORT with -tls-cert/-tls-key (PEM) serves TURN over
// TLS with Go's crypto/tls; -tls-min 1.0|1.1|1.2|1.3 (default 1.0: Go's own
// server default, which accepts TLS 1.0 and 1.1).
//
// Behind a 1:1 NAT: -external-ip is the relayed address told to clients while
// pion binds -relay-ip (the private address).
//
// Peer ACL: -deny and -allow (comma-separated CIDRs) become pion's
// PermissionHandler; without -deny every peer is admitted (pion's default).
//
// Knobs that reproduce behaviours of other TURN servers, applied by a
// net.PacketConn wrapper around pion's UDP socket:
//
//	-drop-family-allocate   never answer an Allocate carrying REQUESTED-ADDRESS-FAMILY
//	-unsigned-channelbind   strip MESSAGE-INTEGRITY/FINGERPRINT from ChannelBind answers
//	-ignore-channeldata     drop every ChannelData message a client sends
//	-software S, -software-digits N   add SOFTWARE "S" + N nines to unsigned answers
//	-strip-relayed          drop XOR-RELAYED-ADDRESS from Allocate success answers
//	-short-attr T[,T]       cut attribute types T (hex, e.g. 0x000d LIFETIME,
//	                        0x0009 ERROR-CODE, 0x0020 XOR-MAPPED-ADDRESS) to 2
//	                        bytes in every answer: shorter than the type needs
//
// On start it prints "ready UDP-ADDR" on stdout; SIGTERM/SIGINT stop it.
package main

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // the REST scheme is HMAC-SHA1
	"crypto/tls"
	"encoding/base64"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun"
	"github.com/pion/turn/v2"
)

type knobs struct {
	dropFamilyAllocate  bool
	unsignedChannelBind bool
	ignoreChannelData   bool
	software            string
	stripRelayed        bool
	shortAttrs          map[stun.AttrType]bool
}

// filterConn applies the knobs to what pion reads and writes on its UDP socket.
type filterConn struct {
	net.PacketConn
	k *knobs
}

func (c *filterConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(p)
		if err != nil {
			return n, addr, err
		}
		if c.k.ignoreChannelData && n >= 4 && p[0]&0xC0 == 0x40 {
			continue
		}
		if c.k.dropFamilyAllocate && isAllocateWithFamily(p[:n]) {
			continue
		}
		return n, addr, nil
	}
}

func (c *filterConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if _, err := c.PacketConn.WriteTo(c.k.rewrite(p), addr); err != nil {
		return 0, err
	}
	return len(p), nil
}

func isAllocateWithFamily(b []byte) bool {
	if len(b) < 20 || b[0]&0xC0 != 0 {
		return false
	}
	m := &stun.Message{Raw: append([]byte{}, b...)}
	if err := m.Decode(); err != nil {
		return false
	}
	return m.Type == stun.NewType(stun.MethodAllocate, stun.ClassRequest) && m.Contains(stun.AttrRequestedAddressFamily)
}

// rewrite returns p, or a copy changed by the knobs. A changed answer loses
// MESSAGE-INTEGRITY (the wrapper has no key) and gets a fresh FINGERPRINT.
func (k *knobs) rewrite(p []byte) []byte {
	if len(p) < 20 || p[0]&0xC0 != 0 {
		return p // ChannelData
	}
	m := &stun.Message{Raw: append([]byte{}, p...)}
	if err := m.Decode(); err != nil {
		return p
	}
	drop := map[stun.AttrType]bool{}
	var extra []stun.RawAttribute
	changed := false
	allocOK := m.Type == stun.NewType(stun.MethodAllocate, stun.ClassSuccessResponse)
	if k.unsignedChannelBind && m.Type.Method == stun.MethodChannelBind {
		changed = true
	}
	if allocOK && k.stripRelayed {
		drop[stun.AttrXORRelayedAddress] = true
		changed = true
	}
	short := map[stun.AttrType]bool{}
	if m.Type.Class == stun.ClassSuccessResponse || m.Type.Class == stun.ClassErrorResponse {
		for _, a := range m.Attributes {
			if k.shortAttrs[a.Type] && len(a.Value) > 2 {
				short[a.Type] = true
				changed = true
			}
		}
	}
	signed := m.Contains(stun.AttrMessageIntegrity)
	if k.software != "" && m.Type.Class != stun.ClassIndication && (!signed || changed) {
		extra = append(extra, stun.RawAttribute{Type: stun.AttrSoftware, Value: []byte(k.software)})
		changed = true
	}
	if !changed {
		return p
	}
	out := stun.New()
	out.Type = m.Type
	out.TransactionID = m.TransactionID
	out.WriteHeader()
	for _, a := range m.Attributes {
		if drop[a.Type] || a.Type == stun.AttrMessageIntegrity || a.Type == stun.AttrFingerprint {
			continue
		}
		if short[a.Type] {
			out.Add(a.Type, a.Value[:2])
			continue
		}
		out.Add(a.Type, a.Value)
	}
	for _, a := range extra {
		out.Add(a.Type, a.Value)
	}
	if err := stun.Fingerprint.AddTo(out); err != nil {
		return p
	}
	return out.Raw
}

func restPassword(secret, username string) string {
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func readSecret(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		fatal("secret file: %v", err)
	}
	return strings.TrimSpace(string(b))
}

func readUsers(path string) map[string]string {
	users := map[string]string{}
	if path == "" {
		return users
	}
	f, err := os.Open(path)
	if err != nil {
		fatal("users file: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, ':'); i > 0 {
			users[line[:i]] = line[i+1:]
		}
	}
	return users
}

func authHandler(secret string, pionRest bool, users map[string]string, log logging.LeveledLogger) turn.AuthHandler {
	var pionHandler turn.AuthHandler
	if pionRest {
		pionHandler = turn.NewLongTermAuthHandler(secret, log)
	}
	return func(username, realm string, src net.Addr) ([]byte, bool) {
		if pw, ok := users[username]; ok {
			return turn.GenerateAuthKey(username, realm, pw), true
		}
		if secret == "" {
			return nil, false
		}
		if pionHandler != nil {
			return pionHandler(username, realm, src)
		}
		expiry := username
		if i := strings.IndexByte(username, ':'); i >= 0 {
			expiry = username[:i]
		}
		t, err := strconv.ParseInt(expiry, 10, 64)
		if err != nil || t < time.Now().Unix() {
			return nil, false
		}
		return turn.GenerateAuthKey(username, realm, restPassword(secret, username)), true
	}
}

func parseNets(list string) []*net.IPNet {
	var nets []*net.IPNet
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			fatal("bad CIDR %q: %v", s, err)
		}
		nets = append(nets, n)
	}
	return nets
}

func contains(nets []*net.IPNet, ip net.IP) bool {
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

func listenTLS(addr, certFile, keyFile, minVersion string) net.Listener {
	versions := map[string]uint16{"1.0": tls.VersionTLS10, "1.1": tls.VersionTLS11, "1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}
	min, ok := versions[minVersion]
	if !ok {
		fatal("-tls-min %q unknown", minVersion)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		fatal("-tls-cert/-tls-key: %v", err)
	}
	ln, err := tls.Listen("tcp4", addr, &tls.Config{MinVersion: min, Certificates: []tls.Certificate{cert}}) //nolint:gosec // a test knob
	if err != nil {
		fatal("listen tls %s: %v", addr, err)
	}
	return ln
}

func fatal(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "pionturn: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:3478", "UDP (and with -tcp also TCP) listening address IP:PORT")
	tcp := flag.Bool("tcp", false, "also listen on TCP at the same address")
	relayIP := flag.String("relay-ip", "", "relayed address IP (default: the listening IP)")
	externalIP := flag.String("external-ip", "", "relayed address told to clients when it is not -relay-ip (a 1:1 NAT's public address)")
	realm := flag.String("realm", "pion.natkit.test", "REALM")
	secretFile := flag.String("secret-file", "", "file holding the REST shared secret")
	pionRest := flag.Bool("pion-rest", false, "REST usernames as pion's NewLongTermAuthHandler takes them (bare expiry)")
	usersFile := flag.String("users-file", "", "file of long-term user:password lines")
	deny := flag.String("deny", "", "comma-separated peer CIDRs to refuse (pion PermissionHandler)")
	allow := flag.String("allow", "", "comma-separated peer CIDRs admitted even inside -deny")
	logLevel := flag.String("log", "warn", "pion log level: error, warn, info, debug, trace")
	tlsListen := flag.String("tls-listen", "", "also serve TURN over TLS on IP:PORT")
	tlsCert := flag.String("tls-cert", "", "PEM certificate for -tls-listen")
	tlsKey := flag.String("tls-key", "", "PEM private key for -tls-listen")
	tlsMin := flag.String("tls-min", "1.0", "lowest TLS version accepted: 1.0, 1.1, 1.2, 1.3")
	k := &knobs{}
	flag.BoolVar(&k.dropFamilyAllocate, "drop-family-allocate", false, "never answer an Allocate with REQUESTED-ADDRESS-FAMILY")
	flag.BoolVar(&k.unsignedChannelBind, "unsigned-channelbind", false, "ChannelBind answers without MESSAGE-INTEGRITY")
	flag.BoolVar(&k.ignoreChannelData, "ignore-channeldata", false, "drop client ChannelData")
	flag.StringVar(&k.software, "software", "", "SOFTWARE value added to unsigned answers")
	digits := flag.Int("software-digits", 0, "append this many '9' digits to -software")
	flag.BoolVar(&k.stripRelayed, "strip-relayed", false, "Allocate success without XOR-RELAYED-ADDRESS")
	shortAttrs := flag.String("short-attr", "", "comma-separated attribute types (hex) cut to 2 bytes in every answer")
	flag.Parse()
	if *digits > 0 {
		k.software += strings.Repeat("9", *digits)
	}
	k.shortAttrs = map[stun.AttrType]bool{}
	for _, t := range strings.Split(*shortAttrs, ",") {
		if t = strings.TrimSpace(t); t == "" {
			continue
		}
		v, err := strconv.ParseUint(strings.TrimPrefix(t, "0x"), 16, 16)
		if err != nil {
			fatal("-short-attr %q: %v", t, err)
		}
		k.shortAttrs[stun.AttrType(v)] = true
	}

	host, _, err := net.SplitHostPort(*listen)
	if err != nil {
		fatal("-listen: %v", err)
	}
	rip := *relayIP
	if rip == "" {
		rip = host
	}
	relay := net.ParseIP(rip)
	if relay == nil {
		fatal("-relay-ip %q is not an IP address", rip)
	}
	if *externalIP != "" { // bind rip, advertise the NAT's public address (natkit.lab.faults' cloud NAT)
		if relay = net.ParseIP(*externalIP); relay == nil {
			fatal("-external-ip %q is not an IP address", *externalIP)
		}
	}

	factory := logging.NewDefaultLoggerFactory()
	level, ok := map[string]logging.LogLevel{"error": logging.LogLevelError, "warn": logging.LogLevelWarn,
		"info": logging.LogLevelInfo, "debug": logging.LogLevelDebug, "trace": logging.LogLevelTrace}[*logLevel]
	if !ok {
		fatal("-log %q unknown", *logLevel)
	}
	factory.DefaultLogLevel = level
	log := factory.NewLogger("pionturn")

	secret := readSecret(*secretFile)
	users := readUsers(*usersFile)
	if secret == "" && len(users) == 0 {
		fatal("give -secret-file or -users-file (pion/turn always authenticates)")
	}
	denied, allowed := parseNets(*deny), parseNets(*allow)
	var permission turn.PermissionHandler
	if len(denied) > 0 {
		permission = func(_ net.Addr, peer net.IP) bool {
			return contains(allowed, peer) || !contains(denied, peer)
		}
	}
	gen := &turn.RelayAddressGeneratorStatic{RelayAddress: relay, Address: rip}

	udp, err := net.ListenPacket("udp4", *listen)
	if err != nil {
		fatal("listen udp %s: %v", *listen, err)
	}
	cfg := turn.ServerConfig{
		Realm:         *realm,
		AuthHandler:   authHandler(secret, *pionRest, users, log),
		LoggerFactory: factory,
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn: &filterConn{udp, k}, RelayAddressGenerator: gen, PermissionHandler: permission,
		}},
	}
	if *tcp {
		ln, err := net.Listen("tcp4", *listen)
		if err != nil {
			fatal("listen tcp %s: %v", *listen, err)
		}
		cfg.ListenerConfigs = []turn.ListenerConfig{{Listener: ln, RelayAddressGenerator: gen, PermissionHandler: permission}}
	}
	if *tlsListen != "" {
		cfg.ListenerConfigs = append(cfg.ListenerConfigs, turn.ListenerConfig{
			Listener: listenTLS(*tlsListen, *tlsCert, *tlsKey, *tlsMin), RelayAddressGenerator: gen, PermissionHandler: permission,
		})
	}
	server, err := turn.NewServer(cfg)
	if err != nil {
		fatal("%v", err)
	}
	fmt.Printf("ready %s\n", udp.LocalAddr())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	<-sig
	if err := server.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "pionturn:", err)
	}
}
