"""Hostile requests to /predict: files that are not images or lie about their size, broken multipart and
content types, body limits, hostile query values and Content-Length headers no HTTP client would send."""

from __future__ import annotations

import json

from bombs import jpeg_segment_flood, png_chunk_flood, progressive_scan_bomb, truncated_rle_bmp
from load import BOUNDARY, as_file, multipart
from PIL import Image

from .case import (
    BODY_TIMEOUT_S,
    HTTP_SHAPE,
    MAX_FILES,
    MAX_TARGET_BYTES,
    MAX_UPLOAD_BYTES,
    MODEL_QUERY,
    PREDICT_SHAPE,
    HostileCase,
)
from .images import (
    animated_webp,
    encode,
    gif_with_frames,
    gradient,
    jpeg_claiming,
    jpeg_with_comments,
    jpeg_with_corrupt_scan,
    jpeg_with_exif_orientation,
    multipage_tiff,
    palette_with_transparency,
    png_bomb,
    png_with_text,
    png_with_ztxt_bomb,
    sixteen_bit_png,
    srgb_icc_jpeg,
    tiny_pdf,
)


def _image_case(name: str, data: bytes, status: int, code: str | None, why: str, filename: str = "x") -> HostileCase:
    body, headers = as_file(data, filename)
    return HostileCase(name, status, code, why, body, headers)


def predict_cases() -> list[HostileCase]:
    """Every /predict case, in a stable order."""
    jpeg = encode(gradient(96, 72), "JPEG", quality=90)
    png = encode(gradient(96, 72), "PNG", compress_level=0)  # 20 KB, so cuts land inside the pixel data
    cases: list[HostileCase] = [
        _image_case("zero bytes", b"", 422, "empty_image", "an empty file part"),
        _image_case("one byte", b"\xff", 415, "unsupported_image", "no format matches one byte"),
        _image_case("plain text", b"hello, this is not a picture\n" * 10, 415, "unsupported_image", "text as an image"),
        _image_case("html", b"<!doctype html><html><body><img src=x></body></html>", 415, "unsupported_image",
                    "HTML as an image"),
        _image_case("json", json.dumps({"image": "cat.jpg", "pixels": [1, 2, 3]}).encode(), 415, "unsupported_image",
                    "JSON as an image"),
        _image_case("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>', 415,
                    "unsupported_image", "vector formats are not decoded"),
        _image_case("pdf", tiny_pdf(), 415, "unsupported_image", "PDF is never handed to a decoder"),
        _image_case("eps header", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "unsupported_image",
                    "EPS would run Ghostscript: refused unread"),
    ]
    # Cut inside the header: no format can be identified (415). Cut inside the pixels: 422.
    for cut in (2, 20, 200, len(jpeg) // 2, len(jpeg) - 200):
        expected = (415, "unsupported_image") if cut <= 20 else (422, "corrupt_image")
        cases.append(_image_case(f"jpeg truncated at {cut}", jpeg[:cut], *expected, "a JPEG cut short"))
    for cut in (8, 30, 60, len(png) // 2, len(png) - 40):
        expected = (415, "unsupported_image") if cut <= 30 else (422, "corrupt_image")
        cases.append(_image_case(f"png truncated at {cut}", png[:cut], *expected, "a PNG cut short"))
    cases.append(_image_case("png without IEND", png[:-12], 200, None, "every pixel arrived; only the end marker is lost"))
    cases += [
        _image_case("jpeg corrupt entropy data", jpeg_with_corrupt_scan(7), 422, "corrupt_image",
                    "random bytes in the scan: libjpeg errors out"),
        _image_case("jpeg claiming 65535x65535", jpeg_claiming(65535, 65535), 413, "image_too_large",
                    "4.3 gigapixels in the header: refused before decoding"),
        _image_case("png bomb 30000x30000", png_bomb(), 413, "image_too_large",
                    "900 megapixels compressed to ~100 KB: refused from the header"),
        _image_case("png zTXt metadata bomb", png_with_ztxt_bomb(64 * 1024 * 1024), 413, "image_too_large",
                    "a 64 MB text chunk compressed to 64 KB: Pillow's chunk limit stops it"),
        _image_case("png huge tEXt chunk", png_with_text(3 * 1024 * 1024), 200, None,
                    "3 MB of plain metadata is within the body limit: ignored"),
        _image_case("jpeg 100 COM segments", jpeg_with_comments(100), 200, None, "6.5 MB of comments: ignored"),
        _image_case("gif 300 frames", gif_with_frames(300), 200, None, "only the first frame is decoded"),
        _image_case("animated webp", animated_webp(30), 200, None, "only the first frame is decoded"),
        _image_case("multi-page tiff", multipage_tiff(20), 200, None, "only the first page is decoded"),
        _image_case("16-bit png", sixteen_bit_png(), 200, None, "scaled to 8 bits"),
        _image_case("cmyk jpeg", encode(gradient(64, 64, "CMYK"), "JPEG"), 200, None, "converted to RGB"),
        _image_case("progressive jpeg", encode(gradient(128, 96), "JPEG", progressive=True), 200, None, "decoded"),
        _image_case("exif rotated jpeg", jpeg_with_exif_orientation(6), 200, None, "rotated as the tag says"),
        _image_case("exif orientation 99", jpeg_with_exif_orientation(99), 200, None, "nonsense tag ignored"),
        _image_case("icc profile jpeg", srgb_icc_jpeg(), 200, None, "profile ignored as torchvision does"),
        _image_case("palette with transparency", palette_with_transparency(), 200, None, "via RGBA to RGB"),
        _image_case("1x1 png", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), 200, None, "upscaled"),
        _image_case("10000x10 png", encode(gradient(10000, 10), "PNG"), 200, None, "crop window resampled only"),
        _image_case("grey jpeg", encode(gradient(50, 50, "L"), "JPEG"), 200, None, "grey to RGB"),
        _image_case("bmp", encode(gradient(30, 30), "BMP"), 200, None, "an accepted raster format"),
        _image_case("truncated rle bmp", truncated_rle_bmp(), 422, "corrupt_image", "RLE data cut short: corrupt, not a mode"),
        # Decode-cost bombs (servable/cost.py): few pixels or bytes, far more decoder work.
        _image_case("jpeg scan bomb 7000x7000 x 15000 scans", progressive_scan_bomb(7000, 7000, 15_000), 422,
                    "image_too_costly", "1.2 MB, 71 s of libjpeg before the scan bound"),
        _image_case("jpeg scan bomb 2000x2000 x 1000 scans", progressive_scan_bomb(2000, 2000, 1000), 422,
                    "image_too_costly", "4 G pixel passes in 30 KB"),
        _image_case("jpeg of 2M empty COM segments", jpeg_segment_flood(2_000_000), 422, "image_too_costly",
                    "8 MB of header segments that Pillow walks in Python"),
        _image_case("png of 600k empty chunks", png_chunk_flood(600_000), 422, "image_too_costly",
                    "7 MB of ancillary chunks that Pillow walks in Python"),
    ]
    # --- protocol-level cases -------------------------------------------------------------------
    multi = f"multipart/form-data; boundary={BOUNDARY}"
    cases += [
        HostileCase("jpeg as text/plain", 415, "unsupported_content_type", "raw body with a non-image type", jpeg,
                    {"content-type": "text/plain"}),
        HostileCase("no content-type", 415, "unsupported_content_type", "raw body without a type", jpeg, {}),
        HostileCase("json content-type", 415, "unsupported_content_type", "application/json body",
                    b'{"file": "x"}', {"content-type": "application/json"}),
        HostileCase("raw image/jpeg body", 200, None, "a raw image/* body is accepted", jpeg,
                    {"content-type": "image/jpeg"}),
        HostileCase("raw png labelled image/jpeg", 200, None, "the declared image type is not trusted", png,
                    {"content-type": "image/jpeg"}),
        HostileCase("multipart without boundary", 422, "bad_multipart", "no boundary parameter",
                    multipart([("file", "a.jpg", jpeg)]), {"content-type": "multipart/form-data"}),
        HostileCase("multipart wrong boundary", 422, "bad_multipart", "boundary never appears",
                    multipart([("file", "a.jpg", jpeg)]), {"content-type": "multipart/form-data; boundary=other"}),
        HostileCase("multipart of four scan bombs", 422, "image_too_costly", "four 1,000-scan bombs in one request",
                    multipart([("files", f"{i}.jpg", progressive_scan_bomb(2000, 2000, 1000)) for i in range(4)]),
                    {"content-type": multi}),
        HostileCase("multipart 1000 files", 413, "too_many_files", f"more than {MAX_FILES} parts",
                    multipart([("files", f"{i}.jpg", b"x") for i in range(1000)]), {"content-type": multi}),
        HostileCase("wrong field name", 422, "unexpected_field", "field 'image' instead of 'file'",
                    multipart([("image", "a.jpg", jpeg)]), {"content-type": multi}),
        HostileCase("text field only", 422, "unexpected_field", "a form without a file",
                    multipart([("comment", "", b"hello")]), {"content-type": multi}),
        HostileCase("empty multipart", 422, "no_image", "closing boundary only", f"--{BOUNDARY}--\r\n".encode(),
                    {"content-type": multi}),
        HostileCase("long filename", 200, None, "1,000-character filename: truncated to 200 when echoed",
                    multipart([("files", "n" * 1_000 + ".jpg", jpeg)]), {"content-type": multi}),
        HostileCase("very long filename", 422, "bad_multipart", "10,000-character part header: over the parser's limit",
                    multipart([("files", "n" * 10_000 + ".jpg", jpeg)]), {"content-type": multi}),
        HostileCase("non-ascii filename", 200, None, "UTF-8 filename echoed intact",
                    multipart([("files", "chat-\u732b-\u00e9t\u00e9-\U0001f431.jpg", jpeg)]), {"content-type": multi}),
        HostileCase("one byte over the limit", 413, "upload_too_large", "Content-Length refused before reading",
                    b"\x00" * (MAX_UPLOAD_BYTES + 1), {"content-type": "image/jpeg"}),
        HostileCase("chunked one byte over the limit", 413, "upload_too_large", "no Content-Length: counted while reading",
                    b"\x00" * (MAX_UPLOAD_BYTES + 1), {"content-type": "image/jpeg"}, kind="chunked"),
        HostileCase("chunked multipart over the limit", 413, "upload_too_large", "multipart streamed past the limit",
                    *as_file(b"\x00" * (MAX_UPLOAD_BYTES + 10)), kind="chunked"),
        HostileCase("stalled upload", 408, "upload_timeout",
                    f"headers and half the body, then silence: cut off after {BODY_TIMEOUT_S:g} s",
                    *as_file(jpeg), kind="stall"),
        HostileCase("unknown model", 404, "unknown_model", "model names are looked up, never loaded",
                    *as_file(jpeg), query="?model=../../etc/passwd"),
        HostileCase("model as url", 404, "unknown_model", "no endpoint fetches a model from a URL",
                    *as_file(jpeg), query="?model=http://127.0.0.1:1/model.onnx"),
        HostileCase("top_k huge", 422, "bad_top_k", "more predictions than classes", *as_file(jpeg),
                    query=MODEL_QUERY + "&top_k=99999999999999999999999"),
        HostileCase("top_k not a number", 422, "invalid_request", "query validation", *as_file(jpeg),
                    query=MODEL_QUERY + "&top_k=%00"),
    ]
    return cases + predict_query_cases(jpeg) + content_length_cases(jpeg)


def socket_request(target: str, body: bytes, header_lines: list[str]) -> bytes:
    """A whole ``Connection: close`` request, header lines exactly as given (none is added but Host)."""
    lines = [f"POST {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *header_lines]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def predict_query_cases(jpeg: bytes) -> list[HostileCase]:
    """Hostile ``model``, ``version`` and ``top_k`` values (each given at most once, else 422)."""
    body, headers = as_file(jpeg)

    def query_case(name: str, query: str, status: int, code: str | None, why: str, words: str | None = None
                   ) -> HostileCase:
        return HostileCase(name, status, code, why, body, headers, query=query, words=words)

    def over_socket(name: str, target: str, status: int, code: str | None, why: str) -> HostileCase:
        """The same upload with a request target no HTTP client would send, written over a raw socket."""
        raw = socket_request(target, body, [f"Content-Length: {len(body)}", f"Content-Type: {headers['content-type']}"])
        path, mark, query = target.partition("?")
        shape = HTTP_SHAPE if status == 400 else PREDICT_SHAPE
        return HostileCase(name, status, code, why, raw, kind="socket", query=mark + query, path=path, shape=shape)

    def too_long(name: str, query: str, why: str) -> HostileCase:
        """A request target past httptools' 64 KiB: refused by the HTTP layer."""
        assert len("/predict" + query) > MAX_TARGET_BYTES
        return over_socket(name, "/predict" + query, 400, None, why)

    q = MODEL_QUERY
    bad_int = "invalid_request"
    #: Values the integer parser refuses (422 invalid_request): (parameter, case name, value, why).
    not_integers = [
        ("top_k", "arabic-indic digit", "%D9%A3", "'\u0663'.isdigit() is True: ASCII only"),
        ("top_k", "fullwidth digit", "%EF%BC%93", "fullwidth 3: int() would take it"),
        ("top_k", "trailing NUL", "3%00", "a NUL after the digits"),
        ("top_k", "negative", "-1", "below 1"),
        ("top_k", "zero", "0", "below 1"),
        ("top_k", "float", "1.5", "not an integer"),
        ("top_k", "exponent", "1e3", "not plain digits"),
        ("top_k", "underscore", "1_0", "int('1_0') is 10: refused"),
        ("top_k", "plus sign", "%2B3", "signs are not digits"),
        ("top_k", "space", "+3", "'+' decodes to a space: int(' 3') is 3, refused"),
        ("top_k", "empty", "", "given but empty"),
        ("top_k", "invalid utf-8", "%FF", "decoded with replacement characters"),
        ("version", "arabic-indic digit", "%D9%A3", "ASCII digits only"),
        ("version", "zero", "0", "versions start at 1"),
        ("version", "negative", "-1", "versions start at 1"),
        ("version", "NUL", "%00", "not a number"),
        ("version", "empty", "", "given but empty"),
    ]
    #: Other hostile values: (parameter, case name, value, status, code, why, words in the message).
    values: list[tuple[str, str, str, int, str | None, str, str | None]] = [
        ("top_k", "5,000 digits", "9" * 5000, 422, "bad_top_k",
         "beyond int()'s 4,300-digit limit: a well-formed number too large (was a 500)", "5000 characters"),
        ("top_k", "60,000 digits", "7" * 60_000, 422, "bad_top_k", "echo cut to 40 characters", None),
        ("top_k", "10^30", "1" + "0" * 30, 422, "bad_top_k", "above int64", None),
        ("top_k", "11 > classes", "11", 422, "bad_top_k", "more predictions than resnet20 has classes", None),
        ("top_k", "above MAX_TOP_K", "1000001", 422, "bad_top_k", "over the parser's maximum", None),
        ("top_k", "leading zeros", "007", 200, None, "plain digits: 7", None),
        ("top_k", "repeated", "3&top_k=3", 422, bad_int, "ambiguous even when equal", "given 2 times"),
        ("top_k", "2,000 times", "1" + "&top_k=1" * 1999, 422, bad_int, "counted, not echoed", "given 2000 times"),
        ("model", "repeated", "resnet20", 422, bad_int, "two model names", "given 2 times"),
        ("version", "repeated", "1&version=1", 422, bad_int, "two versions", "given 2 times"),
        ("version", "5,000 digits", "9" * 5000, 422, bad_int, "no int() on it", "5000 characters"),
        ("version", "10^30", "1" + "0" * 30, 422, bad_int, "above int64", None),
        ("version", "not loaded", "99", 404, "unknown_version", "a well-formed version not served", None),
        ("version", "1", "1", 200, None, "the one loaded version", None),
    ]
    values += [(parameter, name, value, 422, bad_int, why, None) for parameter, name, value, why in not_integers]
    #: Model names alone in the query: (case name, value, status, code, why, words in the message).
    models: list[tuple[str, str, int, str | None, str, str | None]] = [
        ("60,000 characters", "m" * 60_000, 404, "unknown_model",
         "the name came back whole in the 404 (60 KB); cut to 200 characters", "60000 characters"),
        ("NUL", "%00", 404, "unknown_model", "looked up, not found", None),
        ("resnet20 NUL", "resnet20%00", 404, "unknown_model", "no prefix match", None),
        ("cjk", "%E7%8C%AB", 404, "unknown_model", "UTF-8 name", None),
        ("invalid utf-8", "%FF%FE", 404, "unknown_model", "replacement characters", None),
        ("upper case", "RESNET20", 404, "unknown_model", "names are case-sensitive", None),
        ("empty", "", 200, None, "empty means the default model", None),
    ]
    cases = [query_case(f"{parameter} {name}", f"{q}&{parameter}={value}", *rest) for parameter, name, value, *rest in values]
    cases += [query_case(f"model {name}", f"?model={value}", *expected) for name, value, *expected in models]
    cases += [
        query_case("unknown parameter", q + "&colour=red", 200, None, "unknown parameters are ignored"),
        query_case("2,000 unknown parameters", q + "".join(f"&p{i}=x" for i in range(2000)), 200, None, "ignored"),
        over_socket("raw utf-8 in the target", "/predict?model=\u732b", 400, None,
                    "non-ASCII bytes in the request line: the HTTP layer refuses"),
        over_socket("broken percent-escape", "/predict" + q + "&top_k=%zz", 422, bad_int, "'%zz' stays literal"),
        over_socket("absolute-form target", "http://evil.example/predict" + q, 200, None,
                    "http://host/predict: the host part is not used"),
        too_long("top_k 100 KB", q + "&top_k=" + "7" * 100_000, "a 100 KB target: refused by the HTTP layer"),
        too_long("model 100 KB", "?model=" + "m" * 100_000, "a 100 KB target: refused by the HTTP layer"),
        too_long("version 100 KB", q + "&version=" + "1" * 100_000, "a 100 KB target: refused by the HTTP layer"),
    ]
    return cases


def content_length_cases(jpeg: bytes) -> list[HostileCase]:
    """Content-Length values an HTTP client would not send, written over a raw socket."""
    body, headers = as_file(jpeg)
    content_type = f"Content-Type: {headers['content-type']}"

    def case(name: str, lengths: list[str], status: int, code: str | None, why: str,
             extra: tuple[str, ...] = ()) -> HostileCase:
        raw = socket_request("/predict" + MODEL_QUERY, body, [*(f"Content-Length: {n}" for n in lengths), content_type,
                                                               *extra])
        return HostileCase(name, status, code, why, raw, kind="socket", shape=PREDICT_SHAPE if code else HTTP_SHAPE)

    size = len(body)
    return [
        case("content-length not a number", ["abc"], 400, None, "llhttp refuses it"),
        case("content-length negative", ["-1"], 400, None, "llhttp refuses it"),
        case("content-length plus sign", [f"+{size}"], 400, None, "llhttp refuses it"),
        case("content-length arabic-indic digit", ["\u0663"], 400, None, "llhttp refuses it"),
        case("content-length 40 digits", ["9" * 40], 400, None, "overflows llhttp's 64-bit counter"),
        case("content-length 11 digits", ["99999999999"], 413, "upload_too_large", "100 GB announced: refused unread"),
        case("content-length twice, different", [str(size), str(size + 1)], 400, None, "ambiguous framing"),
        case("content-length twice, equal", [str(size), str(size)], 400, None, "llhttp refuses duplicates"),
        case("content-length with chunked", [str(size)], 400, None, "request smuggling shape: refused",
             ("Transfer-Encoding: chunked",)),
        case("content-length shorter than body", [str(size // 2)], 422, "bad_multipart", "the form is cut off"),
        case("content-length zero", ["0"], 422, "bad_multipart", "an empty multipart body"),
    ]
