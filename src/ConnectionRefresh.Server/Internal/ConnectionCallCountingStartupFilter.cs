using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;

namespace ConnectionRefresh.Server.Internal;

/// <summary>Puts <see cref="ConnectionCallCountingMiddleware"/> in front of the application's pipeline. Stateless.</summary>
internal sealed class ConnectionCallCountingStartupFilter : IStartupFilter
{
    public Action<IApplicationBuilder> Configure(Action<IApplicationBuilder> next) => app =>
    {
        app.UseMiddleware<ConnectionCallCountingMiddleware>();
        next(app);
    };
}
