namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Follows the HTTP/2 frames a server writes, from its first byte, only to notice a GOAWAY with an error code (anything
/// but NO_ERROR): RFC 9113 (section 5.4.1) requires the endpoint to close the TCP connection after it, so such a
/// connection gets no linger. Kestrel exposes no public feature that tells a connection error from a graceful close;
/// the bytes it writes do.
/// </summary>
/// <remarks>
/// Cost: a frame header (9 bytes) is read, a payload is skipped with one subtraction, whatever the number of writes it
/// spans; only a GOAWAY's first 8 payload bytes (last stream id, error code) are looked at. No allocation. A mutable
/// struct, kept in a field of its single writer. Not thread-safe: a pipe has one writer at a time.
/// </remarks>
internal struct Http2GoAwayScanner
{
    private const int HeaderLength = 9;
    private const byte GoAwayType = 0x7;

    private int _headerRead;
    private int _length;
    private byte _type;
    private int _payloadRead;
    private uint _errorCode;

    /// <summary>Whether a complete GOAWAY with an error code other than NO_ERROR (0) was written.</summary>
    public bool SawErrorGoAway { get; private set; }

    /// <summary>Follows the next bytes written, which continue those of the previous call.</summary>
    public void Scan(ReadOnlySpan<byte> written)
    {
        while (!written.IsEmpty)
        {
            if (_headerRead < HeaderLength)
            {
                if (_headerRead == 0 && written.Length >= HeaderLength)
                {
                    // The usual case: a whole header in one write.
                    _length = (written[0] << 16) | (written[1] << 8) | written[2];
                    _type = written[3];
                    _headerRead = HeaderLength;
                    written = written[HeaderLength..];
                }
                else
                {
                    ReadHeaderByte(written[0]);
                    written = written[1..];
                }

                if (_headerRead == HeaderLength)
                {
                    _payloadRead = 0;
                    _errorCode = 0;
                }
            }
            else if (_type == GoAwayType && _payloadRead < 8 && _payloadRead < _length)
            {
                // Payload bytes 4 to 7 are the error code (big-endian).
                if (_payloadRead >= 4)
                {
                    _errorCode = (_errorCode << 8) | written[0];
                }

                _payloadRead++;
                written = written[1..];
                if (_payloadRead == 8 && _errorCode != 0)
                {
                    SawErrorGoAway = true;
                }
            }
            else
            {
                var skipped = Math.Min(_length - _payloadRead, written.Length);
                _payloadRead += skipped;
                written = written[skipped..];
            }

            if (_headerRead == HeaderLength && _payloadRead == _length)
            {
                _headerRead = 0;
            }
        }
    }

    private void ReadHeaderByte(byte value)
    {
        switch (_headerRead)
        {
            case 0:
                _length = value << 16;
                break;
            case 1:
                _length |= value << 8;
                break;
            case 2:
                _length |= value;
                break;
            case 3:
                _type = value;
                break;
        }

        _headerRead++;
    }
}
