// natkit test page: candidate gathering (like the Trickle ICE sample) and a data-channel
// check through the natkit signaling server against a `natkit peer` or a second tab.
// No external resources, no inline script (the page is served with a strict CSP).
// State for automation lives in window.natkit: {gather, result} (see README/docs/signaling.md).
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const AGENT = 'natkit-web/1';
  const natkit = { gather: null, result: null, session: null };
  window.natkit = natkit;
  const t00 = performance.now();

  function log(line) {
    const el = $('log');
    el.textContent += `${((performance.now() - t00) / 1000).toFixed(3)}s ${line}\n`;
    el.scrollTop = el.scrollHeight;
  }

  // ---------------------------------------------------------------- settings
  function readSettings() {
    const urls = $('urls').value.split(/\s+/).map((u) => u.trim()).filter(Boolean);
    const stun = urls.filter((u) => /^stuns?:/i.test(u));
    const turn = urls.filter((u) => /^turns?:/i.test(u));
    const iceServers = [];
    if (stun.length) iceServers.push({ urls: stun });
    if (turn.length) iceServers.push({ urls: turn, username: $('username').value, credential: $('credential').value });
    const relayOnly = $('relay').checked;
    let messages = parseInt($('messages').value, 10);
    if (!(messages >= 1 && messages <= 1000)) messages = 10;
    return {
      rtc: { iceServers, iceTransportPolicy: relayOnly ? 'relay' : 'all' },
      relayOnly, room: $('room').value.trim(), token: $('token').value, messages,
      signal: params.get('signal') || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`,
    };
  }

  async function loadSettings() {
    const urls = params.getAll('turn').concat(params.getAll('stun'), params.getAll('urls'));
    if (urls.length) $('urls').value = urls.join('\n');
    for (const key of ['username', 'credential', 'room', 'token', 'messages']) {
      if (params.has(key)) $(key).value = params.get(key);
    }
    if (params.has('relay')) $('relay').checked = params.get('relay') !== '0';
    if (!urls.length) {
      // the server may hand out ICE servers with fresh credentials (natkit signal serve --turn --secret)
      try {
        const q = $('token').value ? `?token=${encodeURIComponent($('token').value)}` : '';
        const resp = await fetch(`/config.json${q}`, { cache: 'no-store' });
        if (resp.ok) {
          const cfg = await resp.json();
          const all = [];
          for (const s of cfg.iceServers || []) {
            for (const u of [].concat(s.urls)) all.push(u);
            if (s.username) { $('username').value = s.username; $('credential').value = s.credential || ''; }
          }
          if (all.length) { $('urls').value = all.join('\n'); $('relay').checked = !!cfg.relayOnly; log(`ICE servers from the server: ${all.join(', ')}`); }
        }
      } catch (e) { log(`no server configuration: ${e}`); }
    }
  }

  // ---------------------------------------------------------------- candidates table
  function parseCandidate(line) {
    // candidate:<foundation> <component> <protocol> <priority> <address> <port> typ <type> [raddr A rport P] ...
    const bits = String(line || '').replace(/^a=/, '').replace(/^candidate:/, '').trim().split(/\s+/);
    if (bits.length < 8) return null;
    const c = { foundation: bits[0], component: bits[1], protocol: bits[2].toLowerCase(), priority: Number(bits[3]), address: bits[4], port: Number(bits[5]), type: bits[7], related: '' };
    const ra = bits.indexOf('raddr');
    const rp = bits.indexOf('rport');
    if (ra > 0 && rp > 0) c.related = `${bits[ra + 1]}:${bits[rp + 1]}`;
    return c;
  }

  function addRow(ms, side, c, target) {
    const tr = document.createElement('tr');
    if (c.type === 'relay') tr.className = 'relay';
    const cells = [`${ms.toFixed(0)} ms`, side, c.type, c.protocol, c.address, String(c.port), c.related || '', c.relayProtocol || '', String(c.priority)];
    for (const v of cells) { const td = document.createElement('td'); td.textContent = v; tr.appendChild(td); }
    $('candidates').tBodies[0].appendChild(tr);
    if (target) target.push({ side, ms, type: c.type, protocol: c.protocol, address: c.address, port: c.port, related: c.related || null });
  }

  function addErrorRow(ms, e, target) {
    const tr = document.createElement('tr');
    tr.className = 'error';
    const td = document.createElement('td');
    td.colSpan = 9;
    td.textContent = `${ms.toFixed(0)} ms  error ${e.errorCode} ${e.errorText || ''} from ${e.url || '?'}`;
    tr.appendChild(td);
    $('candidates').tBodies[0].appendChild(tr);
    if (target) target.push({ code: e.errorCode, text: e.errorText || '', url: e.url || '' });
  }

  function clearTable() { $('candidates').tBodies[0].textContent = ''; $('gathering-note').textContent = ''; }

  // ---------------------------------------------------------------- gathering only
  async function gather() {
    const s = readSettings();
    clearTable();
    const g = { done: false, candidates: [], errors: [], ms: null, relayOnly: s.relayOnly };
    natkit.gather = g;
    let pc;
    try { pc = new RTCPeerConnection(s.rtc); } catch (e) { log(`bad ICE configuration: ${e.message}`); g.done = true; g.errors.push({ code: 0, text: e.message, url: '' }); return g; }
    pc.createDataChannel('natkit-gather');
    const t0 = performance.now();
    const finished = new Promise((resolve) => {
      pc.onicecandidate = (e) => {
        if (e.candidate && e.candidate.candidate) {
          const c = parseCandidate(e.candidate.candidate);
          if (c) { c.relayProtocol = e.candidate.relayProtocol || ''; addRow(performance.now() - t0, 'local', c, g.candidates); }
        } else if (!e.candidate) resolve();
      };
      pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') resolve(); };
      setTimeout(resolve, 15000);
    });
    pc.onicecandidateerror = (e) => addErrorRow(performance.now() - t0, e, g.errors);
    await pc.setLocalDescription(await pc.createOffer());
    await finished;
    g.ms = performance.now() - t0;
    $('gathering-note').textContent = `gathering done in ${g.ms.toFixed(0)} ms: ${g.candidates.length} candidates, ${g.errors.length} errors`;
    log($('gathering-note').textContent);
    pc.close();
    g.done = true;
    return g;
  }

  // ---------------------------------------------------------------- connection session
  class Session {
    constructor(s) {
      this.s = s;
      this.ws = null; this.pc = null; this.dc = null;
      this.myId = null; this.remoteId = null; this.role = null;
      this.pending = []; this.pongs = new Map(); this.sink = null;
      this.remoteDone = null; this.remoteDoneWaiters = [];
      this.t0 = performance.now();
      this.finished = false;
      this.r = {
        done: false, ok: null, verdict: 'running', role: null, myId: null, remoteId: null, remoteAgent: null,
        relayOnly: s.relayOnly, candidates: [], iceErrors: [], selected: null, connectedMs: null,
        pingsSent: 0, pingsEchoed: 0, echoOk: false, rttMs: [], messagesReceived: 0, pingsReceived: 0,
        chatReceived: [], bulkBytes: 0, files: [], remoteReport: null, media: [], failures: [], errors: [],
      };
      natkit.result = this.r;
    }

    ms() { return performance.now() - this.t0; }

    start() {
      setVerdict('running', 'connecting to the signaling server…');
      log(`signaling ${this.s.signal}, room ${this.s.room}, relay only: ${this.s.relayOnly}`);
      const ws = new WebSocket(this.s.signal);
      this.ws = ws;
      ws.onopen = () => {
        const join = { type: 'join', room: this.s.room, meta: { agent: AGENT } };
        if (this.s.token) join.token = this.s.token;
        this.send(join);
        this.keepalive = setInterval(() => this.send({ type: 'ping' }), 20000);
      };
      ws.onmessage = (ev) => { this.onSignal(ev.data).catch((e) => this.fail(`signaling: ${e.message || e}`)); };
      ws.onerror = () => { if (!this.finished) log('WebSocket error'); };
      ws.onclose = (ev) => {
        clearInterval(this.keepalive);
        if (!this.finished && !this.dcOpen) this.fail(`signaling connection closed (code ${ev.code})`);
      };
      this.deadline = setTimeout(() => { if (!this.dcOpen) this.fail('no data channel within 60 s'); }, 60000);
    }

    send(msg) { if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg)); }

    async onSignal(text) {
      let m;
      try { m = JSON.parse(text); } catch (e) { return; }
      switch (m.type) {
        case 'joined':
          this.myId = this.r.myId = m.id;
          if (m.peers && m.peers.length) {
            this.role = this.r.role = 'offerer';
            this.remoteId = this.r.remoteId = m.peers[0].id;
            this.r.remoteAgent = (m.peers[0].meta || {}).agent || null;
            log(`joined as ${m.id}; ${m.peers[0].id} is here: sending the offer`);
            setVerdict('running', 'negotiating…');
            await this.offer(m.peers[0].meta || {});
          } else {
            this.role = this.r.role = 'answerer';
            log(`joined as ${m.id}; waiting for a peer (run: natkit peer --signal ${this.s.signal} --room ${this.s.room} ...)`);
            setVerdict('running', `waiting for a peer in room ${this.s.room}…`);
          }
          break;
        case 'peer-joined':
          log(`peer ${m.id} joined (${(m.meta || {}).agent || 'unknown agent'})`);
          if (!this.remoteId) this.r.remoteAgent = (m.meta || {}).agent || null;
          break;
        case 'offer':
          if (this.pc) { log(`ignoring a second offer from ${m.from}`); return; }
          this.remoteId = this.r.remoteId = m.from;
          setVerdict('running', 'negotiating…');
          this.createPc();
          this.remoteSdpCandidates(m.sdp);
          await this.pc.setRemoteDescription({ type: 'offer', sdp: m.sdp });
          await this.flush();
          await this.pc.setLocalDescription(await this.pc.createAnswer());
          this.send({ type: 'answer', sdp: this.pc.localDescription.sdp, to: this.remoteId });
          log('answer sent');
          break;
        case 'answer':
          if (!this.pc || m.from !== this.remoteId) return;
          this.remoteSdpCandidates(m.sdp);
          await this.pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
          await this.flush();
          log('answer applied');
          break;
        case 'candidate':
          if (m.from !== this.remoteId && this.remoteId) return;
          if (m.candidate && m.candidate.candidate) {
            const c = parseCandidate(m.candidate.candidate);
            if (c) addRow(this.ms(), 'remote', c, this.r.candidates);
          }
          if (!this.pc || !this.pc.remoteDescription) this.pending.push(m.candidate);
          else await this.addCandidate(m.candidate);
          break;
        case 'bye':
        case 'peer-left':
          if ((m.from || m.id) === this.remoteId && !this.remoteGone) {
            this.remoteGone = true;
            log(`peer ${this.remoteId} left (${m.reason || m.type})`);
            // after its verdict arrived, leaving is the normal end; the verdict may still be in flight
            // on the data channel when the signaling message overtakes it: allow a moment
            setTimeout(() => { if (!this.finished && !this.remoteDone) this.fail('the peer left before the check finished'); }, 1500);
          }
          break;
        case 'error':
          this.r.errors.push(`${m.code}: ${m.message}`);
          log(`server error ${m.code}: ${m.message}`);
          if (['bad-token', 'room-full', 'not-joined'].includes(m.code)) this.fail(`signaling refused: ${m.code} ${m.message}`);
          break;
        default:
          break;
      }
    }

    remoteSdpCandidates(sdp) {
      for (const line of sdp.split(/\r?\n/)) {
        if (line.startsWith('a=candidate:')) { const c = parseCandidate(line); if (c) addRow(this.ms(), 'remote', c, this.r.candidates); }
      }
    }

    async addCandidate(c) {
      try { await this.pc.addIceCandidate(c ? c : undefined); } catch (e) { if (c) log(`remote candidate refused: ${e.message}`); }
    }

    async flush() { const p = this.pending; this.pending = []; for (const c of p) await this.addCandidate(c); }

    createPc() {
      const pc = new RTCPeerConnection(this.s.rtc);
      this.pc = pc;
      pc.onicecandidate = (e) => {
        const c = e.candidate && e.candidate.candidate ? e.candidate : null;
        if (c) { const p = parseCandidate(c.candidate); if (p) { p.relayProtocol = c.relayProtocol || ''; addRow(this.ms(), 'local', p, this.r.candidates); } }
        if (e.candidate && !e.candidate.candidate) return; // Chrome's empty end-of-generation candidate
        this.send({ type: 'candidate', candidate: c ? c.toJSON() : null, to: this.remoteId });
      };
      pc.onicecandidateerror = (e) => { addErrorRow(this.ms(), e, this.r.iceErrors); log(`ICE candidate error ${e.errorCode} ${e.errorText || ''} ${e.url || ''}`); };
      pc.oniceconnectionstatechange = () => log(`ICE ${pc.iceConnectionState}`);
      pc.onconnectionstatechange = () => {
        log(`connection ${pc.connectionState}`);
        if (pc.connectionState === 'failed' && !this.finished) this.fail('ICE/DTLS failed: no working candidate pair');
      };
      pc.ondatachannel = (e) => this.setupChannel(e.channel);
      pc.ontrack = (e) => {
        log(`receiving ${e.track.kind}`);
        this.r.media.push({ kind: e.track.kind });
      };
      return pc;
    }

    async offer(remoteMeta) {
      const pc = this.createPc();
      this.setupChannel(pc.createDataChannel('natkit'));
      if (remoteMeta.media) { pc.addTransceiver('video', { direction: 'recvonly' }); pc.addTransceiver('audio', { direction: 'recvonly' }); }
      await pc.setLocalDescription(await pc.createOffer());
      this.send({ type: 'offer', sdp: pc.localDescription.sdp, to: this.remoteId });
      log('offer sent (candidates follow, trickled)');
    }

    setupChannel(dc) {
      this.dc = dc;
      dc.binaryType = 'arraybuffer';
      dc.onopen = () => {
        this.dcOpen = true;
        this.r.connectedMs = this.ms();
        log(`data channel open after ${this.r.connectedMs.toFixed(0)} ms`);
        this.dcSend({ t: 'hello', agent: AGENT, role: this.role });
        enableChat(true);
        this.runChecks().catch((e) => this.fail(`checks: ${e.message || e}`));
      };
      dc.onclose = () => {
        log('data channel closed');
        enableChat(false);
        if (!this.finished && !this.remoteDone) this.fail('the data channel closed before the check finished');
      };
      dc.onmessage = (e) => this.onData(e.data);
    }

    dcSend(obj) { if (this.dc && this.dc.readyState === 'open') this.dc.send(JSON.stringify(obj)); }

    onData(data) {
      if (typeof data !== 'string') { this.onBinary(data); return; }
      let m;
      try { m = JSON.parse(data); } catch (e) { return; }
      this.r.messagesReceived += 1;
      switch (m.t) {
        case 'hello': this.r.remoteAgent = m.agent || this.r.remoteAgent; log(`remote is ${m.agent}`); break;
        case 'ping': this.r.pingsReceived += 1; this.dcSend({ t: 'pong', seq: m.seq, data: m.data }); break;
        case 'pong': { const w = this.pongs.get(m.seq); if (w) { this.pongs.delete(m.seq); w(m); } break; }
        case 'bulk': this.sink = { kind: 'bulk', size: Number(m.bytes) || 0, got: 0 }; if (!this.sink.size) this.dcSend({ t: 'bulk-ok', bytes: 0 }); break;
        case 'file': this.sink = { kind: 'file', name: String(m.name || 'file'), size: Number(m.size) || 0, sha256: m.sha256, got: 0, chunks: [] }; log(`receiving file ${this.sink.name} (${this.sink.size} bytes)`); if (!this.sink.size) this.fileDone(); break;
        case 'chat': this.r.chatReceived.push(String(m.text)); chatLine(`peer: ${m.text}`); break;
        case 'done': this.dcSend({ t: 'done-ack' }); this.remoteDone = m.report || {}; this.r.remoteReport = this.remoteDone; for (const w of this.remoteDoneWaiters) w(); break;
        default: break;
      }
    }

    onBinary(buf) {
      const s = this.sink;
      if (!s) return;
      const n = buf.byteLength;
      s.got += n;
      if (s.kind === 'bulk') {
        this.r.bulkBytes += n;
        if (s.got >= s.size) { this.sink = null; this.dcSend({ t: 'bulk-ok', bytes: s.got }); }
      } else {
        s.chunks.push(buf);
        if (s.got >= s.size) this.fileDone();
      }
    }

    async fileDone() {
      const s = this.sink;
      this.sink = null;
      const blob = new Blob(s.chunks);
      let hex = null;
      if (window.crypto && crypto.subtle) {
        const digest = await crypto.subtle.digest('SHA-256', await blob.arrayBuffer());
        hex = Array.from(new Uint8Array(digest)).map((b) => b.toString(16).padStart(2, '0')).join('');
      }
      const f = { name: s.name, bytes: s.got, sha256: hex, match: hex === null ? null : hex === s.sha256 };
      this.r.files.push(f);
      log(`file ${f.name}: ${f.bytes} bytes, sha256 ${hex || 'not computed (not a secure context)'} ${f.match ? 'matches' : 'DOES NOT match'}`);
      this.dcSend({ t: 'file-ok', name: f.name, bytes: f.bytes, sha256: hex, match: f.match });
    }

    ping(seq, data, timeoutMs) {
      return new Promise((resolve) => {
        const timer = setTimeout(() => { this.pongs.delete(seq); resolve(null); }, timeoutMs);
        this.pongs.set(seq, (m) => { clearTimeout(timer); resolve(m); });
        this.dcSend({ t: 'ping', seq, data });
      });
    }

    async runChecks() {
      setVerdict('running', 'exchanging messages…');
      const n = this.s.messages;
      let intact = true;
      for (let i = 0; i < n; i++) {
        const bytes = new Uint8Array(16);
        crypto.getRandomValues(bytes);
        const data = Array.from(bytes).map((b) => b.toString(16).padStart(2, '0')).join('');
        const t = performance.now();
        this.r.pingsSent += 1;
        const m = await this.ping(i, data, 5000);
        if (!m) { this.r.failures.push(`message ${i} was not echoed within 5 s`); intact = false; break; }
        this.r.rttMs.push(performance.now() - t);
        this.r.pingsEchoed += 1;
        if (m.data !== data) intact = false;
      }
      this.r.echoOk = intact && this.r.pingsEchoed === n;
      this.r.selected = await selectedPair(this.pc);
      this.r.media = await mediaStats(this.pc, this.r.media);
      const verdictOk = this.verdictOk();
      this.dcSend({ t: 'done', report: { ok: verdictOk, agent: AGENT, selected: this.r.selected, echoed: this.r.pingsEchoed, sent: this.r.pingsSent } });
      log(`own checks done: ${this.r.pingsEchoed}/${n} echoed; waiting for the peer's report`);
      if (!this.remoteDone) {
        await new Promise((resolve) => { this.remoteDoneWaiters.push(resolve); setTimeout(resolve, 30000); });
      }
      if (!this.remoteDone) this.r.failures.push('the peer did not report within 30 s');
      this.r.selected = await selectedPair(this.pc) || this.r.selected;
      this.finish();
    }

    verdictOk() {
      const f = [];
      if (!this.r.echoOk) f.push(`echo: ${this.r.pingsEchoed}/${this.r.pingsSent} messages came back intact`);
      const sel = this.r.selected;
      if (!sel) f.push('no selected candidate pair in getStats()');
      else if (this.s.relayOnly && sel.local.type !== 'relay') f.push(`relay only, but the local candidate is ${sel.local.type}`);
      this.r.failures = this.r.failures.filter((x) => !x.startsWith('echo:') && !x.startsWith('relay only') && !x.startsWith('no selected'));
      this.r.failures.push(...f);
      return this.r.failures.length === 0;
    }

    finish() {
      if (this.finished) return;
      this.verdictOk();
      if (this.remoteDone && this.remoteDone.ok === false) this.r.failures.push('the peer reported FAIL');
      this.finished = true;
      clearTimeout(this.deadline);
      this.r.ok = this.r.failures.length === 0;
      this.r.verdict = this.r.ok ? 'pass' : 'fail';
      this.r.done = true;
      showResult(this.r);
    }

    fail(reason) {
      if (this.finished) return;
      this.r.failures.push(reason);
      log(`FAIL: ${reason}`);
      this.finished = true;
      clearTimeout(this.deadline);
      this.r.ok = false; this.r.verdict = 'fail'; this.r.done = true;
      showResult(this.r);
      // best effort: the pair may still be known
      if (this.pc) selectedPair(this.pc).then((p) => { if (p) { this.r.selected = p; showResult(this.r); } }).catch(() => {});
    }

    close() {
      this.finished = true;
      clearTimeout(this.deadline);
      clearInterval(this.keepalive);
      try { this.send({ type: 'bye' }); } catch (e) { /* closing anyway */ }
      if (this.dc) this.dc.close();
      if (this.pc) this.pc.close();
      if (this.ws) this.ws.close();
      enableChat(false);
    }
  }

  async function selectedPair(pc) {
    if (!pc) return null;
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
    if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    if (!pair) return null;
    const side = (id) => {
      const c = stats.get(id) || {};
      return { type: c.candidateType, protocol: c.protocol, address: c.address || c.ip, port: c.port, relayProtocol: c.relayProtocol || null };
    };
    return { local: side(pair.localCandidateId), remote: side(pair.remoteCandidateId), rttMs: pair.currentRoundTripTime != null ? pair.currentRoundTripTime * 1000 : null, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived };
  }

  async function mediaStats(pc, seen) {
    if (!pc || !seen.length) return seen;
    const out = [];
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp') out.push({ kind: s.kind, packets: s.packetsReceived, bytes: s.bytesReceived, frames: s.framesDecoded ?? null, fps: s.framesPerSecond ?? null, freezeCount: s.freezeCount ?? null, freezeSeconds: s.totalFreezesDuration ?? null });
    });
    return out.length ? out : seen;
  }

  // ---------------------------------------------------------------- UI
  function setVerdict(state, text) { const v = $('verdict'); v.dataset.state = state; v.textContent = text; }

  function showResult(r) {
    const sel = r.selected;
    const pairText = sel ? `${sel.local.type}/${sel.remote.type}  ${sel.local.address}:${sel.local.port} -> ${sel.remote.address}:${sel.remote.port}` : 'none';
    setVerdict(r.ok ? 'pass' : 'fail', `${r.ok ? 'PASS' : 'FAIL'}: selected pair ${sel ? `${sel.local.type}/${sel.remote.type}` : 'none'}${r.failures.length ? ' — ' + r.failures.join('; ') : ''}`);
    const rtts = r.rttMs.slice().sort((a, b) => a - b);
    const rows = [
      ['role', `${r.role || '–'} (${r.myId || '–'}) with ${r.remoteId || '–'} (${r.remoteAgent || 'unknown'})`],
      ['selected pair', pairText],
      ['connected', r.connectedMs == null ? '–' : `${r.connectedMs.toFixed(0)} ms after joining`],
      ['echo', `${r.pingsEchoed}/${r.pingsSent} intact: ${r.echoOk ? 'yes' : 'no'}`],
      ['echo rtt p50', rtts.length ? `${rtts[Math.floor((rtts.length - 1) / 2)].toFixed(1)} ms` : '–'],
      ['from the peer', `${r.messagesReceived} messages (${r.pingsReceived} pings), ${r.bulkBytes} bulk bytes, ${r.files.length} files`],
      ['peer verdict', r.remoteReport ? (r.remoteReport.ok ? 'PASS' : 'FAIL') : '–'],
    ];
    const dl = $('summary');
    dl.textContent = '';
    for (const [k, v] of rows) {
      const dt = document.createElement('dt'); dt.textContent = k;
      const dd = document.createElement('dd'); dd.textContent = v;
      dl.append(dt, dd);
    }
    log(`verdict: ${r.ok ? 'PASS' : 'FAIL'} (${pairText})`);
  }

  function chatLine(text) { const el = $('chat-log'); el.textContent += `${text}\n`; }
  function enableChat(on) { $('chat-text').disabled = !on; $('chat-send').disabled = !on; }

  function sendChat() {
    const s = natkit.session;
    const text = $('chat-text').value;
    if (!s || !text) return;
    s.dcSend({ t: 'chat', text });
    chatLine(`me: ${text}`);
    $('chat-text').value = '';
  }

  function connect() {
    if (natkit.session) natkit.session.close();
    clearTable();
    const s = readSettings();
    natkit.session = new Session(s);
    natkit.session.start();
    $('hangup').disabled = false;
  }

  document.addEventListener('DOMContentLoaded', async () => {
    $('settings-form').addEventListener('submit', (e) => e.preventDefault());
    $('gather').addEventListener('click', () => { gather().catch((e) => log(`gathering failed: ${e.message || e}`)); });
    $('connect').addEventListener('click', connect);
    $('hangup').addEventListener('click', () => { if (natkit.session) natkit.session.close(); $('hangup').disabled = true; });
    $('chat-send').addEventListener('click', sendChat);
    $('chat-text').addEventListener('keydown', (e) => { if (e.key === 'Enter') sendChat(); });
    await loadSettings();
    natkit.ready = true;
    const auto = params.get('auto');
    if (auto === 'gather') gather().catch((e) => log(`gathering failed: ${e.message || e}`));
    else if (auto === 'connect' || auto === '1') connect();
  });
})();
