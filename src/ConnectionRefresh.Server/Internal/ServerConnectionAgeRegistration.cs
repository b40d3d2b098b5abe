namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Marks that <c>services.AddServerConnectionAge(...)</c> ran: options are in the container and every HTTP request
/// is counted on its connection (needed for <see cref="ServerConnectionAgeOptions.MaxConnectionIdle"/>). Immutable.
/// </summary>
internal sealed class ServerConnectionAgeRegistration;
