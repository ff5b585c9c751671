"""Synthetic media over a peer connection, and receiver-side measurement.

The sender adds :class:`PatternVideoTrack` (320x240 at 30 frames/s, a moving
pattern with the frame number written into the picture as 20 blocks of
black or white) and :class:`ToneAudioTrack` (440 Hz sine, 48 kHz mono,
20 ms frames). The receiver (:class:`MediaReceiver`) decodes what arrives
and measures, over a fixed window:

- frames and frame rate (frames/s), resolution;
- received bitrate in kbit/s of RTP payload (what WebRTC's
  ``bytesReceived`` counts, RFC 3550 §6.4.1 octet count);
- freezes as WebRTC stats define them (webrtc-stats ``freezeCount``): an
  inter-frame gap longer than max(3 x the average of the last 30 gaps,
  that average + 150 ms); their count and total duration in milliseconds;
- frames lost, from gaps in the frame numbers read back from the picture
  (a check that the picture itself crossed, not only packets).

aiortc and av are imported when a track or receiver is created, not at
import time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fractions
import math
import time

VIDEO_WIDTH = 320
VIDEO_HEIGHT = 240
VIDEO_FPS = 30
COUNTER_BITS = 20  # frame number bits written into the picture
BLOCK = VIDEO_WIDTH // COUNTER_BITS  # 16 px wide, 16 px tall blocks on the top rows
AUDIO_RATE = 48000
AUDIO_PTIME = 0.020
TONE_HZ = 440.0


@dataclasses.dataclass(frozen=True)
class VideoStats:
    """Received video over the window: ``fps`` frames/s, ``bitrate_kbps`` RTP payload kbit/s,
    ``freeze_ms`` total freeze duration, ``max_gap_ms`` the longest gap between frames."""

    frames: int
    fps: float
    bitrate_kbps: float | None
    width: int | None
    height: int | None
    freeze_count: int
    freeze_ms: float
    max_gap_ms: float | None
    frames_lost: int | None  # gaps in the frame numbers read from the picture; None if unreadable
    counter_readable: bool  # the frame numbers decoded and increased


@dataclasses.dataclass(frozen=True)
class AudioStats:
    """Received audio over the window: ``seconds`` of samples, ``level_dbfs`` RMS level (a 440 Hz
    tone sent at half scale reads about -9 to -12 dBFS after Opus), ``tone_hz`` estimated from zero crossings."""

    frames: int
    seconds: float
    bitrate_kbps: float | None
    level_dbfs: float | None
    tone_hz: float | None


@dataclasses.dataclass(frozen=True)
class MediaReport:
    """What :meth:`MediaReceiver.measure` saw in ``window_s`` seconds. ``ok``: video frames and
    audio samples arrived and the frame numbers read back; ``failures`` says what did not."""

    window_s: float
    first_frame_ms: float | None  # measurement start -> first video frame ever received
    video: VideoStats | None
    audio: AudioStats | None
    ok: bool
    failures: tuple[str, ...]


# --------------------------------------------------------------------------- senders


def _video_base():
    import numpy as np

    y = np.zeros((VIDEO_HEIGHT, VIDEO_WIDTH), dtype=np.uint8)
    gx = (np.arange(VIDEO_WIDTH) * 255 // max(1, VIDEO_WIDTH - 1)).astype(np.uint8)
    y[:] = gx[None, :]
    u = np.full((VIDEO_HEIGHT // 2, VIDEO_WIDTH // 2), 128, dtype=np.uint8)
    v = np.full((VIDEO_HEIGHT // 2, VIDEO_WIDTH // 2), 128, dtype=np.uint8)
    return y, u, v


def write_counter(y, n: int) -> None:
    """Write ``n`` (mod 2^20) into the top ``BLOCK`` rows of a luma plane: bit i is block i, MSB first."""
    for i in range(COUNTER_BITS):
        bit = (n >> (COUNTER_BITS - 1 - i)) & 1
        y[0:BLOCK, i * BLOCK:(i + 1) * BLOCK] = 235 if bit else 16


def read_counter(y) -> int | None:
    """The frame number written by :func:`write_counter`, or None when the blocks are not clearly black/white."""
    if y.shape[0] < BLOCK or y.shape[1] < COUNTER_BITS * BLOCK:
        return None
    n = 0
    q = BLOCK // 4
    for i in range(COUNTER_BITS):
        m = float(y[q:BLOCK - q, i * BLOCK + q:(i + 1) * BLOCK - q].mean())
        if 60 < m < 190:
            return None
        n = (n << 1) | (1 if m >= 128 else 0)
    return n


def PatternVideoTrack(fps: int = VIDEO_FPS):  # noqa: N802 - a class factory (aiortc imported lazily)
    """A video ``MediaStreamTrack``: ``VIDEO_WIDTH`` x ``VIDEO_HEIGHT`` yuv420p at ``fps`` frames/s."""
    import numpy as np
    from aiortc.mediastreams import VideoStreamTrack
    from av import VideoFrame

    class _Pattern(VideoStreamTrack):
        def __init__(self) -> None:
            super().__init__()
            self._y, self._u, self._v = _video_base()
            self._n = 0

        async def next_timestamp(self):
            # like VideoStreamTrack's, at our frame rate
            from aiortc.mediastreams import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE

            if hasattr(self, "_timestamp"):
                self._timestamp += int(VIDEO_CLOCK_RATE / fps)
                wait = self._start + (self._timestamp / VIDEO_CLOCK_RATE) - time.time()
                await asyncio.sleep(wait)
            else:
                self._start = time.time()
                self._timestamp = 0
            return self._timestamp, VIDEO_TIME_BASE

        async def recv(self):
            pts, time_base = await self.next_timestamp()
            y = np.roll(self._y, self._n * 4, axis=1)  # a moving gradient: every frame differs
            write_counter(y, self._n)
            self._n += 1
            frame = VideoFrame.from_ndarray(np.concatenate([y, self._u.reshape(-1, VIDEO_WIDTH), self._v.reshape(-1, VIDEO_WIDTH)]),
                                            format="yuv420p")
            frame.pts = pts
            frame.time_base = time_base
            return frame

    return _Pattern()


def ToneAudioTrack(hz: float = TONE_HZ):  # noqa: N802
    """An audio ``MediaStreamTrack``: a ``hz`` sine at half scale, 48 kHz mono s16, 20 ms frames."""
    import numpy as np
    from aiortc.mediastreams import AudioStreamTrack
    from av import AudioFrame

    samples = int(AUDIO_RATE * AUDIO_PTIME)

    class _Tone(AudioStreamTrack):
        def __init__(self) -> None:
            super().__init__()
            self._phase = 0

        async def recv(self):
            if self.readyState != "live":
                from aiortc.mediastreams import MediaStreamError

                raise MediaStreamError
            if hasattr(self, "_timestamp"):
                self._timestamp += samples
                wait = self._start + (self._timestamp / AUDIO_RATE) - time.time()
                await asyncio.sleep(wait)
            else:
                self._start = time.time()
                self._timestamp = 0
            t = (np.arange(samples) + self._phase) / AUDIO_RATE
            self._phase += samples
            data = (np.sin(2 * math.pi * hz * t) * 16383).astype(np.int16).reshape(1, -1)
            frame = AudioFrame.from_ndarray(data, format="s16", layout="mono")
            frame.pts = self._timestamp
            frame.sample_rate = AUDIO_RATE
            frame.time_base = fractions.Fraction(1, AUDIO_RATE)
            return frame

    return _Tone()


def add_senders(pc, *, video: bool = True, audio: bool = True) -> list:
    """Add the synthetic tracks to ``pc`` (before ``createOffer``, or on the answerer after
    ``setRemoteDescription``); returns the tracks (stop them when done)."""
    tracks = []
    if video:
        tracks.append(PatternVideoTrack())
    if audio:
        tracks.append(ToneAudioTrack())
    for t in tracks:
        pc.addTrack(t)
    return tracks


def add_receivers(pc) -> None:
    """Offer to receive video and audio (``recvonly`` transceivers) without sending any."""
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")


# --------------------------------------------------------------------------- receiver


class _Track:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.events: list[tuple[float, object]] = []  # (monotonic time, per-frame info)
        self.rtp: list[tuple[float, int]] = []  # (monotonic time, payload bytes)
        self.task: asyncio.Task | None = None
        self.error: str | None = None


class MediaReceiver:
    """Consumes every track ``pc`` receives and measures it.

    Create it before the remote description is applied (it listens to
    ``pc.on("track")``), then ``await measure(seconds)`` once connected, and
    :meth:`close` at the end.
    """

    def __init__(self, pc) -> None:
        self.pc = pc
        self.tracks: dict[str, _Track] = {}
        self.created = time.monotonic()
        pc.on("track", self._on_track)

    @property
    def receiving(self) -> bool:
        """True once the remote side sends at least one track."""
        return bool(self.tracks)

    def _on_track(self, track) -> None:
        from . import _aiortc_private as private

        if track.kind in self.tracks:
            return
        state = _Track(track.kind)
        self.tracks[track.kind] = state
        receiver = next((t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        if receiver is not None:
            private.count_rtp_payload(receiver, lambda n, s=state: s.rtp.append((time.monotonic(), n)))
        state.task = asyncio.get_running_loop().create_task(self._consume(track, state))

    async def _consume(self, track, state: _Track) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if state.kind == "video":
                    y = frame.to_ndarray(format="gray")
                    state.events.append((now, (frame.width, frame.height, read_counter(y))))
                else:
                    import numpy as np

                    data = frame.to_ndarray().astype(np.float64).reshape(-1)
                    if frame.layout.name != "mono" and len(frame.layout.channels) > 1:
                        data = data[:: len(frame.layout.channels)]
                    state.events.append((now, (frame.samples, frame.sample_rate, data)))
                    if len(state.events) > 3000:  # keep a minute of audio at most
                        del state.events[:1000]
        except MediaStreamError:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a decoder problem is a measurement, not a crash
            state.error = f"{exc.__class__.__name__}: {exc}"

    async def measure(self, seconds: float, *, wait_first: float = 5.0) -> MediaReport:
        """Measure for ``seconds`` from now; waits up to ``wait_first`` seconds for a first track.

        Returns a :class:`MediaReport`; does not raise for missing media (``ok`` False).
        """
        t0 = time.monotonic()
        deadline = t0 + wait_first
        while not self.tracks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        start = time.monotonic()
        await asyncio.sleep(seconds)
        end = time.monotonic()
        return self.report(start, end)

    def report(self, start: float, end: float) -> MediaReport:
        """The statistics of the events in ``[start, end]`` (monotonic seconds)."""
        window = max(1e-6, end - start)
        failures = []
        video = audio = None
        first_frame_ms = None
        v = self.tracks.get("video")
        if v is not None:
            if v.events:
                first_frame_ms = max(0.0, (v.events[0][0] - start) * 1000.0)
            video = _video_stats([e for e in v.events if start <= e[0] <= end], [r for r in v.rtp if start <= r[0] <= end], window)
            if video.frames == 0:
                failures.append("no video frame arrived in the window" + (f" ({v.error})" if v.error else ""))
            elif not video.counter_readable:
                failures.append("video frames arrived but the frame numbers in the picture did not read back")
        else:
            failures.append("no video track arrived")
        a = self.tracks.get("audio")
        if a is not None:
            audio = _audio_stats([e for e in a.events if start <= e[0] <= end], [r for r in a.rtp if start <= r[0] <= end], window)
            if audio.frames == 0:
                failures.append("no audio arrived in the window" + (f" ({a.error})" if a.error else ""))
        else:
            failures.append("no audio track arrived")
        return MediaReport(window_s=window, first_frame_ms=first_frame_ms, video=video, audio=audio,
                           ok=not failures, failures=tuple(failures))

    async def close(self) -> None:
        for state in self.tracks.values():
            if state.task is not None:
                state.task.cancel()
        tasks = [s.task for s in self.tracks.values() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)


def _kbps(rtp: list[tuple[float, int]], window: float) -> float | None:
    if not rtp:
        return None
    return sum(n for _, n in rtp) * 8 / window / 1000.0


def freezes(arrivals: list[float]) -> tuple[int, float, float | None]:
    """``(count, total milliseconds, longest gap ms)`` of freezes in frame arrival times (seconds).

    A gap is a freeze when it exceeds max(3 x avg, avg + 150 ms), avg being the
    mean of the previous (up to) 30 gaps (webrtc-stats ``freezeCount``).
    """
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    count, total = 0, 0.0
    for i, gap in enumerate(gaps):
        recent = gaps[max(0, i - 30):i]
        if len(recent) < 5:
            continue
        avg = sum(recent) / len(recent)
        if gap > max(3 * avg, avg + 0.150):
            count += 1
            total += gap
    return count, total * 1000.0, (max(gaps) * 1000.0 if gaps else None)


def _video_stats(events, rtp, window: float) -> VideoStats:
    frames = len(events)
    count, freeze_ms, max_gap = freezes([t for t, _ in events])
    counters = [info[2] for _, info in events]
    readable = [c for c in counters if c is not None]
    lost = None
    ok_counter = False
    if readable and len(readable) >= 0.9 * len(counters):
        span = readable[-1] - readable[0] + 1
        increasing = all(b > a for a, b in zip(readable, readable[1:]))
        ok_counter = increasing
        lost = max(0, span - len(readable)) if increasing else None
    width = events[-1][1][0] if events else None
    height = events[-1][1][1] if events else None
    return VideoStats(frames=frames, fps=frames / window, bitrate_kbps=_kbps(rtp, window), width=width, height=height,
                      freeze_count=count, freeze_ms=freeze_ms, max_gap_ms=max_gap, frames_lost=lost, counter_readable=ok_counter)


def _audio_stats(events, rtp, window: float) -> AudioStats:
    import numpy as np

    frames = len(events)
    samples = sum(info[0] for _, info in events)
    rate = events[0][1][1] if events else AUDIO_RATE
    level = tone = None
    if events:
        data = np.concatenate([info[2] for _, info in events[-50:]])  # the last second
        rms = float(np.sqrt(np.mean(data ** 2))) if data.size else 0.0
        level = 20 * math.log10(rms / 32768.0) if rms > 0 else None
        crossings = int(np.count_nonzero(np.diff(np.signbit(data))))
        tone = crossings / 2 / (data.size / rate) if data.size else None
    return AudioStats(frames=frames, seconds=samples / rate if rate else 0.0, bitrate_kbps=_kbps(rtp, window),
                      level_dbfs=level, tone_hz=tone)
