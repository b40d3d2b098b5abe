namespace ConnectionRefresh.Tests.Infrastructure;

internal static class Calls
{
    public static Task<HttpResponseMessage> Send(this HttpMessageInvoker invoker)
        => invoker.SendAsync(new HttpRequestMessage(HttpMethod.Post, "http://backend:5000/greet.Greeter/SayHello"), CancellationToken.None);

    /// <summary>Sends a call and reads its response to the end, as a finished unary call does.</summary>
    public static async Task SendAndRead(this HttpMessageInvoker invoker)
    {
        using var response = await invoker.Send();
        var stream = await response.Content.ReadAsStreamAsync();
        var buffer = new byte[16];
        while (await stream.ReadAsync(buffer) > 0)
        {
        }
    }
}
